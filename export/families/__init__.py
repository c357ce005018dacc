"""One recipe per model family, chosen by one dispatch on the checkpoint's architecture.

A recipe module exposes `export(ctx: ExportContext) -> None`, filling `ctx.manifest` and writing
graphs into `ctx.out_dir`, and `load_reference(folder)` returning the torch model the parity check
compares against. A recipe may also expose `check_parity(ctx) -> dict` (the figures for the
manifest); without one, the export runs the generation parity check of `mmedge.export.parity`,
with the torch model's inputs from the recipe's `reference_inputs(runtime, ids, images)` where it
has one (a model that takes its images' tiles in its own shape).
Adding a family means adding one file here and one line to FAMILIES.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from mmedge.errors import UnsupportedModelError

# architecture (config.json "architectures"[0]) -> recipe module
FAMILIES = {
    "LlamaForCausalLM": "llm",
    "Qwen2ForCausalLM": "llm",
    "MistralForCausalLM": "llm",
    "LlavaForConditionalGeneration": "llava",
    "Idefics3ForConditionalGeneration": "idefics3",
    "SmolVLMForConditionalGeneration": "idefics3",
    "LlavaOnevisionForConditionalGeneration": "llava_onevision",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_5_vl",
    "Qwen3VLForConditionalGeneration": "qwen3_vl",
    "CLIPModel": "clip",
    "SiglipModel": "clip",
}


def recipe_for(config: dict[str, Any]) -> ModuleType:
    archs = config.get("architectures") or []
    arch = archs[0] if archs else config.get("model_type", "unknown")
    if arch not in FAMILIES:
        supported = ", ".join(sorted(FAMILIES))
        raise UnsupportedModelError(f"mmedge cannot export {arch} yet. Supported architectures: "
                                    f"{supported} (the README's supported-models table says what "
                                    "was verified for each).")
    return importlib.import_module(f"{__name__}.{FAMILIES[arch]}")
