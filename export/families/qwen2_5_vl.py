"""Qwen2.5-VL (`Qwen2_5_VLForConditionalGeneration`: Qwen2.5-VL-3B/7B-Instruct, Cosmos-Reason1):
Qwen2-VL's layout with a different tower: RMSNorm and a gated MLP in the blocks, and windowed
attention (windows of `window_size` px, 112 = 4x4 merged tokens) in every layer but the
`fullatt_block_indexes` ones. transformers reorders the patches window by window (at merge-unit
granularity) before the blocks and back after the merger; mmedge's runtime does both reorders
(mmedge.vision.layouts.qwen2vl) and gives the graph the windows as rows of a gather, so the
windowed layers attend within 64-patch rows instead of computing N x N scores.
"""

from __future__ import annotations

from ..context import ExportContext
from ..qwen_vl import VisionGraph, builder_folder, export_qwen_vl, load_reference, reference_inputs

__all__ = ["export", "load_reference", "reference_inputs"]
INPUTS = ("patch_tokens", "patch_positions", "window_gather", "window_scatter")


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    vision = model.config.vision_config
    full = set(vision.fullatt_block_indexes)
    windowed = [i for i in range(vision.depth) if i not in full]
    graph = VisionGraph(model.model.visual, INPUTS, windowed_layers=windowed)
    folder = builder_folder(model, "qwen2_5_vl", ctx.workdir / "decoder-source", ctx.source.folder)
    export_qwen_vl(ctx, "qwen2_5_vl", graph, {"window_size": int(vision.window_size)}, folder)
