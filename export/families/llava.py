"""LLaVA: a CLIP or SigLIP vision tower + MLP projector + a Llama, Qwen2 or Mistral text model
(`LlavaForConditionalGeneration`, e.g. llava-hf/llava-1.5-7b-hf).

Bundle: `vision.onnx` (tower + projector from the patch tokens on, honouring the config's
vision_feature_layer and vision_feature_select_strategy), `patch_embedding.safetensors` (the weights
mmedge's patch-embedding kernel turns frames into those tokens with), `embed.onnx` + `decoder.onnx` for the text model (split out of
the checkpoint into a plain causal-LM folder for the decoder builder), and the image
preprocessing of the checkpoint's image processor.
"""

from __future__ import annotations

from pathlib import Path

from ..context import ExportContext
from ..language_model import export_language_model, split_text_model
from ..preprocessing import image_spec_from_hf, read_image_processor_config
from ..patch_embedding import save_patch_weights
from ..vision import add_vision_component, export_vision, image_size, vision_parity

VISION_FILE = "vision.onnx"


def load_reference(folder: Path):
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(str(folder), dtype="float32",
                                                         trust_remote_code=False).eval()


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    folder = ctx.source.folder
    config = ctx.source.config
    ctx.manifest["family"] = "llava"

    ctx.step("vision graph")
    vision = export_vision(model, ctx.out_dir / VISION_FILE)
    add_vision_component(ctx, ctx.out_dir / VISION_FILE, vision)

    image = image_spec_from_hf(read_image_processor_config(folder), config["vision_config"])
    image_token_id = config.get("image_token_id", config.get("image_token_index"))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    image["image_token_id"] = int(image_token_id)
    image["image_token"] = tokenizer.convert_ids_to_tokens(int(image_token_id))
    image["num_image_tokens"] = vision["num_image_tokens"]
    image["patch_embedding"] = save_patch_weights(model, ctx.out_dir, image_size(model))
    ctx.manifest["image"] = image

    lm_folder = split_text_model(model.model.language_model, model.lm_head, model.config.text_config,
                                 ctx.workdir / "text-model", folder)
    export_language_model(ctx, lm_folder, model, model.config.text_config.to_dict())


def check_vision(ctx: ExportContext, pixel_values) -> dict:
    """Vision graph vs transformers' get_image_features on the same pixels."""
    return vision_parity(ctx.reference, ctx.out_dir / VISION_FILE, pixel_values)
