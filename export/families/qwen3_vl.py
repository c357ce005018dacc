"""Qwen3-VL (`Qwen3VLForConditionalGeneration`: Qwen3-VL-2B/4B/8B-Instruct): 16-px patches with a
learned position grid (num_position_embeddings, bilinearly resampled to each image's grid; the
runtime computes the taps and weights, the graph gathers them) besides the 2D rotary positions,
full attention, a merger of 2x2 patches, and DeepStack: mergers at the vision layers
`deepstack_visual_indexes` whose outputs are added to the text model's hidden states at the image
positions after its first layers (export/deepstack.py adds that to the builder's decoder). The
text model is Qwen3 (q/k norms) with interleaved M-RoPE.
"""

from __future__ import annotations

import math

from mmedge.errors import UnsupportedModelError

from ..context import ExportContext
from ..qwen_vl import VisionGraph, builder_folder, export_qwen_vl, load_reference, reference_inputs

__all__ = ["export", "load_reference", "reference_inputs"]
INPUTS = ("patch_tokens", "patch_positions", "pos_index", "pos_weight")


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    vision = model.config.vision_config
    side = math.isqrt(int(vision.num_position_embeddings))
    if side * side != int(vision.num_position_embeddings):
        raise UnsupportedModelError(f"num_position_embeddings is {vision.num_position_embeddings}, "
                                    "not a square grid; Qwen3-VL's position grid is square.")
    layers = list(vision.deepstack_visual_indexes)
    graph = VisionGraph(model.model.visual, INPUTS, deepstack_layers=layers)
    folder = builder_folder(model, "qwen3_vl", ctx.workdir / "decoder-source", ctx.source.folder)
    export_qwen_vl(ctx, "qwen3_vl", graph, {"num_grid_per_side": side}, folder,
                   deepstack_layers=len(layers))
