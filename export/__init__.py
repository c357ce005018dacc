"""mmedge.export: turn Hugging Face models into mmedge bundles (needs torch and transformers).

`export_model(MODEL, OUT)` resolves MODEL (hub id, local folder, .gguf), picks the family recipe
from its architecture, writes the graphs, runs the parity check against torch, and writes the
manifest with every file's sha256 last. The bundle is assembled in a temporary folder next to OUT
and moved into place only when complete, so a failed export never leaves a half bundle behind and
never loses the bundle it was to replace; `overwrite` replaces only a bundle mmedge wrote (see
output.py for what is refused).

The runtime never imports this package; the CLI imports it lazily for `mmedge export`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from mmedge import __version__
from mmedge.bundle import write_manifest
from mmedge.errors import ExportError

from .context import ExportContext
from .decoder import PRECISIONS
from .families import recipe_for
from .output import check_target, follow_umask, make_staging, swap_in
from .sources import resolve

VISION_PRECISIONS = ("fp32", "fp16", "int8")
_EXPORT_EXTRA = ("torch", "transformers", "onnx", "onnxruntime_genai", "safetensors")


def _require_export_extra() -> None:
    import importlib.util

    missing = [name for name in _EXPORT_EXTRA if importlib.util.find_spec(name) is None]
    if missing:
        raise ExportError(f"Exporting needs {', '.join(missing)}: pip install 'mmedge[export]' "
                          f"(torch pinned to its CPU build; see the README).")


def export_model(model: str, out_dir: str | Path, precision: str = "fp32",
                 vision_precision: str = "fp32", parity: bool = True,
                 overwrite: bool = False, progress: bool = True,
                 requantize: bool = False) -> dict[str, Any]:
    """Export MODEL into a bundle at `out_dir`; returns the manifest.

    `requantize`: for int4, quantize weights dequantized from GGUF (a .gguf file, or a checkpoint
    built from one) again with round-to-nearest instead of keeping their own grid (faster decode,
    further from the reference; see export/grid_reuse.py)."""
    _require_export_extra()
    if precision not in PRECISIONS:
        raise ExportError(f"--quant must be one of {', '.join(PRECISIONS)}, not '{precision}'.")
    if vision_precision not in VISION_PRECISIONS:
        raise ExportError(f"--vision-quant must be one of {', '.join(VISION_PRECISIONS)}, "
                          f"not '{vision_precision}'.")
    out_dir = check_target(Path(out_dir), overwrite)
    staging = make_staging(out_dir)
    try:
        with tempfile.TemporaryDirectory(prefix="mmedge-export-") as scratch:
            manifest = _export_into(model, staging, Path(scratch), precision, vision_precision,
                                    parity, progress, requantize)
        follow_umask(staging)
        swap_in(staging, out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _export_into(model: str, staging: Path, scratch: Path, precision: str, vision_precision: str,
                 parity: bool, progress: bool, requantize: bool) -> dict[str, Any]:
    """Write the whole bundle for MODEL into the empty folder `staging`; return its manifest."""
    from tqdm.auto import tqdm

    bar = tqdm(total=7, desc="export", unit="step", disable=not progress)

    def step(name: str) -> None:
        bar.set_postfix_str(name)
        bar.update(1)

    bar.set_postfix_str("reading model")
    source = resolve(model, scratch)
    recipe = recipe_for(source.config)
    ctx = ExportContext(source=source, out_dir=staging, precision=precision,
                        vision_precision=vision_precision, workdir=scratch, step=step,
                        requantize=requantize)
    step("loading torch model")
    ctx.reference = recipe.load_reference(source.folder)
    recipe.export(ctx)   # advances the bar through its graphs
    ctx.manifest["exporter"] = {"mmedge": __version__, "source": source.description}
    write_manifest(ctx.out_dir, ctx.manifest)
    if parity:
        step("parity check vs torch")
        if hasattr(recipe, "check_parity"):   # e.g. CLIP: embeddings, not generation
            ctx.manifest["exporter"]["parity"] = recipe.check_parity(ctx)
        else:
            from .parity import check_parity

            ctx.manifest["exporter"]["parity"] = check_parity(
                ctx.out_dir, ctx.reference, precision, with_image="image" in ctx.manifest,
                **({"make_inputs": recipe.reference_inputs} if hasattr(recipe, "reference_inputs") else {}))
        write_manifest(ctx.out_dir, ctx.manifest)
    bar.set_postfix_str("done")
    bar.update(bar.total - bar.n)
    bar.close()
    return ctx.manifest
