"""The decoder graph: a Llama/Qwen2/Mistral text model with its KV cache, at a chosen precision.

The graph is made by onnxruntime-genai's model builder (a maintained MIT library on PyPI), not by
tracing the model with torch.onnx: on SmolLM2-135M a torch.onnx export decodes at less than half
the speed of the builder's graph (GroupQueryAttention updating the cache in place, fused rotary and
norm ops, MatMulNBits; see shared/design/ARCHITECTURE.md). We ask it for a graph that takes
`inputs_embeds` (so image features can be spliced in) and computes last-position logits only.

Precisions:
  fp32  the builder's fp32 graph for the CPU
  fp16  the builder's fp16 graph for CUDA (it also runs, slowly, on the CPU)
  int8  8-bit weights in blocks of 32 (symmetric, round-to-nearest; MatMulNBits bits=8) and int8
        activations per block of 32 features of each token (accuracy level 4). Not ONNX
        Runtime's dynamic quantization (MatMulInteger): that quantizes a whole prompt's activations
        with one scale, and a LLaVA's image tokens, far from the text's range, then wiped out the
        prompt (mmedge-tiny-vlm answered 1% of held-out questions, fp32 38%).
  int4  block-wise (32) symmetric 4-bit weights, MatMulNBits, int8 activations (accuracy level 4);
        for weights that already lie on a GGUF Q4/Q8 grid (a GGUF import, or a checkpoint built
        from one), that grid is kept exactly instead (grid_reuse.py)

What lives elsewhere: the token-embedding graph (export/embed.py), checking the result against
torch (export/parity.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import onnx

from mmedge.errors import ExportError

from .grid_reuse import eight_bit_blocks, reuse_grids
from .onnx_utils import graph_signature

PRECISIONS = ("fp32", "fp16", "int8", "int4")
DECODER_FILE = "decoder.onnx"

# builder precision and execution-provider target for each bundle precision
_BUILDER_TARGET = {"fp32": ("fp32", "cpu"), "fp16": ("fp16", "cuda"),
                   "int8": ("int4", "cpu"), "int4": ("int4", "cpu")}


def build_decoder(hf_dir: Path, out_dir: Path, precision: str,
                  reuse_grid: bool = False) -> dict[str, Any]:
    """Write `decoder.onnx` (+ `decoder.onnx.data`) into `out_dir` from the HF causal-LM folder
    `hf_dir`; return the decoder's manifest entry.

    `reuse_grid`: int4 keeps the 4/8-bit grid of every weight that lies on one exactly (weights
    dequantized from GGUF) instead of quantizing it again (see export/grid_reuse.py); the other
    weights are the builder's round-to-nearest int4.
    """
    if precision not in PRECISIONS:
        raise ExportError(f"Unknown precision '{precision}'. Choose one of: {', '.join(PRECISIONS)}.")
    builder_precision, target = _BUILDER_TARGET[precision]
    entry: dict[str, Any] = {"file": DECODER_FILE, "precision": precision, "target": target}
    with tempfile.TemporaryDirectory(prefix="mmedge-decoder-") as tmp:
        built = Path(tmp) / "built"
        _run_builder(hf_dir, built, builder_precision, target)
        if precision == "int8" or (precision == "int4" and reuse_grid):
            # The builder's int4 graph, its MatMulNBits weights rewritten from its fp32 graph's.
            reference = Path(tmp) / "float"
            _run_builder(hf_dir, reference, "fp32", "cpu")
            if precision == "int8":
                entry["weights"] = eight_bit_blocks(built / DECODER_FILE, reference / DECODER_FILE)
            else:
                entry["grid_reuse"] = reuse_grids(built / DECODER_FILE, reference / DECODER_FILE)
        for name in (DECODER_FILE, DECODER_FILE + ".data"):
            if (built / name).exists():
                shutil.move(str(built / name), str(out_dir / name))
    graph = onnx.load(str(out_dir / DECODER_FILE), load_external_data=False)
    _check_symbolic_dims(graph)
    return {**entry, **graph_signature(graph)}


def _run_builder(hf_dir: Path, work: Path, precision: str, target: str) -> None:
    extra = ["exclude_embeds=true", "prune_lm_head=true", f"filename={DECODER_FILE}"]
    if precision == "int4":
        extra += ["block_size=32", "accuracy_level=4", "is_symmetric=true"]
    cmd = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir),
           "-m", str(hf_dir), "-o", str(work), "-p", precision, "-e", target,
           "-c", str(work / "cache"), "--extra_options", *extra]
    # Offline and no remote code: the builder must only read the local folder we give it.
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if result.returncode != 0 or not (work / DECODER_FILE).exists():
        tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-15:])
        raise ExportError(f"Building the decoder graph failed (onnxruntime-genai builder, "
                          f"{precision}/{target}):\n{tail}")


def _check_symbolic_dims(graph: onnx.ModelProto) -> None:
    """Batch, sequence and past-length dims must be symbolic: a static dim here means the graph
    only works for the sample shapes it was built with."""
    for value in list(graph.graph.input) + list(graph.graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.name in ("inputs_embeds", "attention_mask") or value.name.startswith(
                ("past_key_values", "present")):
            for axis in (0, 2) if value.name.startswith(("past", "present")) else (0, 1):
                if not dims[axis].dim_param:
                    raise ExportError(f"decoder input/output {value.name} has a static dim "
                                      f"{dims[axis].dim_value} at axis {axis}; expected symbolic.")
