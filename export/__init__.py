"""mmedge.export: turn Hugging Face models into mmedge bundles (needs torch and transformers).

`export_model(MODEL, OUT)` resolves MODEL (hub id, local folder, .gguf), picks the family recipe
from its architecture, writes the graphs, runs the parity check against torch, and writes the
manifest with every file's sha256 last. The bundle is assembled in a temporary folder next to OUT
and moved into place only when complete, so a failed export never leaves a half bundle behind.

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
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ExportError(f"{out_dir} exists and is not empty. Choose another folder or pass "
                          f"--overwrite.")
    out_dir.parent.mkdir(parents=True, exist_ok=True)

    from tqdm.auto import tqdm

    with tempfile.TemporaryDirectory(prefix="mmedge-export-") as scratch, \
            tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.partial-",
                                        dir=out_dir.parent) as staging:
        bar = tqdm(total=7, desc="export", unit="step", disable=not progress)

        def step(name: str) -> None:
            bar.set_postfix_str(name)
            bar.update(1)

        bar.set_postfix_str("reading model")
        source = resolve(model, Path(scratch))
        recipe = recipe_for(source.config)
        ctx = ExportContext(source=source, out_dir=Path(staging), precision=precision,
                            vision_precision=vision_precision, workdir=Path(scratch), step=step,
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
                    ctx.out_dir, ctx.reference, precision, with_image="image" in ctx.manifest)
            write_manifest(ctx.out_dir, ctx.manifest)
        bar.set_postfix_str("done")
        bar.update(bar.total - bar.n)
        bar.close()
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(staging, out_dir)
        # TemporaryDirectory's cleanup expects the folder it made; give it an empty one back.
        Path(staging).mkdir()
    return ctx.manifest
