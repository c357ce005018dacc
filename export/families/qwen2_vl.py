"""Qwen2-VL (`Qwen2VLForConditionalGeneration`: Qwen2-VL-2B/7B-Instruct): a ViT with 2D rotary
positions over 14-px patches of the smart-resized image (full attention), a 2x2 patch merger
(LayerNorm + MLP) making the image tokens, and a Qwen2 text model with sectioned M-RoPE.

Bundle: `vision.onnx` (see export/qwen_vl.py for its inputs), `patch_embedding.safetensors` (the
Conv3d folded to 2D), `embed.onnx`, `decoder.onnx` from onnxruntime-genai's builder (which knows
Qwen2.5-VL's text decoder, 3D position ids, GroupQueryAttention, MRotaryEmbedding; Qwen2-VL's
text model is the same and is handed to it as one), and the image entry with layout "qwen2vl".
"""

from __future__ import annotations

from ..context import ExportContext
from ..qwen_vl import VisionGraph, builder_folder, export_qwen_vl, load_reference, reference_inputs

__all__ = ["export", "load_reference", "reference_inputs"]
INPUTS = ("patch_tokens", "patch_positions")


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    folder = builder_folder(model, "qwen2_vl", ctx.workdir / "decoder-source", ctx.source.folder)
    export_qwen_vl(ctx, "qwen2_vl", VisionGraph(model.model.visual, INPUTS), {}, folder)
