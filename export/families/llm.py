"""Decoder-only language models: Llama, Qwen2 and Mistral (SmolLM2 is a Llama).

Bundle: `embed.onnx` + `decoder.onnx`. The checkpoint folder goes to the decoder builder as is.
"""

from __future__ import annotations

from pathlib import Path

from ..context import ExportContext
from ..language_model import export_language_model


def load_reference(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype="float32",
                                                trust_remote_code=False).eval()


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    ctx.manifest["family"] = "llm"
    export_language_model(ctx, ctx.source.folder, model, model.config.to_dict())
