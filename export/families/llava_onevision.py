"""LLaVA-OneVision: a SigLIP tower + MLP projector per tile, tiles laid out "anyres" from the
checkpoint's pinpoints, + a Qwen2 (or Llama, Mistral) text model
(`LlavaOnevisionForConditionalGeneration`, e.g. llava-hf/llava-onevision-qwen2-0.5b-ov-hf).

Bundle: `vision.onnx` (tower + projector from the patch tokens on, per tile, honouring
vision_feature_layer; the "full" strategy, see below), `patch_embedding.safetensors`,
`image_newline.safetensors` (the learned vector that ends every row of an image's features),
`embed.onnx` + `decoder.onnx` for the text model, and an image entry with layout "anyres" that
holds everything `mmedge.vision.layouts.anyres` needs to cut images into tiles, count their
tokens and stitch their features as transformers does.

What is refused, each naming the key: image processor keys this recipe does not know (a rule
it would silently not reproduce), a center crop, a size that is not one square tile, pinpoints
that are not whole tiles or differ between config.json and the image processor, a
vision_aspect_ratio other than "anyres_max_N" or one that differs between the model and the
processor, the "default" select strategy (transformers' pack_image_features itself fails on it:
it needs the full side x side patch grid), and a processor token count that is not the tower's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmedge.errors import UnsupportedModelError

from ..context import ExportContext
from ..language_model import export_language_model, split_text_model
from ..patch_embedding import save_patch_weights
from ..preprocessing import read_image_processor_config, read_processor_config
from ..vision import add_vision_component, export_vision, image_size

VISION_FILE = "vision.onnx"
NEWLINE_FILE = "image_newline.safetensors"

# LlavaOnevisionImageProcessor's class defaults in transformers 5.24, where the config leaves a
# key out or sets it to null (as transformers does).
_DEFAULTS: dict[str, Any] = {
    "do_convert_rgb": True, "do_resize": True, "size": {"height": 384, "width": 384},
    "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711], "do_pad": True,
    "do_center_crop": None, "crop_size": None,
}
# Keys that say what the config is, not how to process an image.
_BOOKKEEPING = {"image_processor_type", "processor_class", "feature_extractor_type",
                "default_to_square"}   # default_to_square only matters for an integer size
_KNOWN = set(_DEFAULTS) | _BOOKKEEPING | {"image_grid_pinpoints"}
_PROCESSOR_TYPES = {"LlavaOnevisionImageProcessor", "LlavaOnevisionImageProcessorFast",
                    "LlavaOnevisionImageProcessorPil"}
_ASPECT = re.compile(r"anyres_max_([1-9][0-9]*)")


def load_reference(folder: Path):
    from transformers import LlavaOnevisionForConditionalGeneration

    return LlavaOnevisionForConditionalGeneration.from_pretrained(
        str(folder), dtype="float32", trust_remote_code=False).eval()


def reference_inputs(runtime, ids: list[int], images: list[Any]) -> dict[str, Any]:
    """The torch model's inputs: all tiles of all images [tiles, 3, H, W] as the runtime cut them
    (base image first), and each image's (height, width), from which transformers finds its tiles."""
    import torch

    inputs: dict[str, Any] = {"input_ids": torch.tensor([ids])}
    if images:
        inputs["pixel_values"] = torch.from_numpy(runtime.preprocess(images))
        inputs["image_sizes"] = torch.tensor([list(runtime.plan_image(image, tiles=False).size) for image in images])
    return inputs


def _refuse(key: str, value: Any, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"the image processor config has {key}={value!r:.80}: {why}. "
                                 "mmedge reproduces LlavaOnevisionImageProcessor's own rules only; "
                                 "fix the config or report the checkpoint.")


def image_spec(processor_config: Mapping[str, Any], processor: Mapping[str, Any],
               config: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's "anyres" image entry, minus the token and file fields; see the module doc.
    `processor_config` is the image processor's config, `processor` processor_config.json's own
    keys, `config` config.json."""
    unknown = sorted(set(processor_config) - _KNOWN)
    if unknown:
        raise _refuse(unknown[0], processor_config[unknown[0]],
                      "this key is not one LlavaOnevisionImageProcessor's rules mmedge knows")
    kind = processor_config.get("image_processor_type")
    if kind is not None and kind not in _PROCESSOR_TYPES:
        raise _refuse("image_processor_type", kind, "this recipe is for LlavaOnevisionImageProcessor")

    def get(key: str) -> Any:
        value = processor_config.get(key)
        return _DEFAULTS[key] if value is None else value

    vision = config["vision_config"]
    tile = vision["image_size"] if isinstance(vision["image_size"], int) else None  # square towers only
    size = get("size")
    if tile is None or not isinstance(size, Mapping) or \
            {k: v for k, v in size.items() if v is not None} != {"height": tile, "width": tile}:
        raise _refuse("size", size, f"it must be {{'height': {tile}, 'width': {tile}}}, the tower's "
                      "square tile")
    if get("do_center_crop"):
        raise _refuse("do_center_crop", True, "LLaVA-OneVision tiles are never cropped")
    if not get("do_convert_rgb"):
        raise _refuse("do_convert_rgb", False, "mmedge always converts images to RGB")
    pinpoints = processor_config.get("image_grid_pinpoints")
    if pinpoints is None:   # the processor's class default is the model config's default too
        pinpoints = config.get("image_grid_pinpoints")
    pinpoints = _pinpoints(pinpoints, tile)
    if pinpoints != _pinpoints(config.get("image_grid_pinpoints"), tile):
        raise _refuse("image_grid_pinpoints", pinpoints, "config.json's image_grid_pinpoints "
                      "differ; the processor and the model would lay the tiles out differently")
    aspect = config.get("vision_aspect_ratio", "anyres_max_9")
    if processor.get("vision_aspect_ratio", "anyres_max_9") != aspect:
        raise _refuse("vision_aspect_ratio", processor.get("vision_aspect_ratio"),
                      f"config.json says {aspect!r}; the prompt and the features would disagree")
    match = _ASPECT.fullmatch(str(aspect))
    if not match:
        raise _refuse("vision_aspect_ratio", aspect, 'only "anyres_max_N" is supported')
    side = tile // int(vision["patch_size"])
    tokens = processor.get("num_image_tokens", side * side)
    if tokens != side * side:
        raise _refuse("num_image_tokens", tokens, f"the tower gives {side * side} features a tile")
    return {
        "layout": "anyres", "processor": "llava_onevision",
        "do_convert_rgb": True, "do_resize": bool(get("do_resize")),
        "size": {"height": tile, "width": tile}, "resample": int(get("resample")),
        "do_rescale": bool(get("do_rescale")), "rescale_factor": float(get("rescale_factor")),
        "do_normalize": bool(get("do_normalize")),
        "image_mean": _per_channel(get("image_mean"), "image_mean"),
        "image_std": _per_channel(get("image_std"), "image_std"),
        "do_pad": bool(get("do_pad")),   # pads the tile count of a batch only: no effect here
        "image_size": [tile, tile], "patch_size": int(vision["patch_size"]),
        "image_grid_pinpoints": pinpoints, "tokens_per_tile": side * side,
        "vision_aspect_ratio": aspect, "max_num_patches": int(match.group(1)),
    }


def _pinpoints(value: Any, tile: int) -> list[list[int]]:
    ok = isinstance(value, list) and value and all(
        isinstance(p, (list, tuple)) and len(p) == 2 and all(isinstance(v, int) and v > 0 for v in p)
        for p in value)
    if not ok or any(h % tile or w % tile for h, w in value):
        raise _refuse("image_grid_pinpoints", value, f"they must be [height, width] pairs of whole "
                      f"{tile}-px tiles (transformers cuts partial tiles but counts whole ones)")
    return [[int(h), int(w)] for h, w in value]


def _per_channel(value: Any, key: str) -> list[float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise _refuse(key, value, "RGB needs 3 values")
    return values


def _check_model(model) -> None:
    config = model.config
    if config.vision_config.model_type != "siglip_vision_model":
        raise UnsupportedModelError(
            f"the vision tower is {config.vision_config.model_type!r}; mmedge exports LLaVA-OneVision "
            "with a SigLIP tower (its features must form a square patch grid, without a CLS token).")
    if config.vision_feature_select_strategy != "full":
        raise UnsupportedModelError(
            f"vision_feature_select_strategy is {config.vision_feature_select_strategy!r}: transformers' "
            "LLaVA-OneVision needs the full patch grid of every tile (its pack_image_features fails "
            'otherwise); set it to "full" in config.json.')


def _save_newline(model, out_dir: Path) -> dict[str, Any]:
    from safetensors.numpy import save_file

    vector = model.model.image_newline.detach().float().cpu().numpy()
    save_file({"image_newline": vector}, str(out_dir / NEWLINE_FILE))
    return {"file": NEWLINE_FILE, "dim": int(vector.shape[0])}


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    folder = ctx.source.folder
    config = ctx.source.config
    ctx.manifest["family"] = "llava_onevision"
    _check_model(model)
    # Read and check the preprocessing before the slow steps: a refusal should come at once.
    image = image_spec(read_image_processor_config(folder), read_processor_config(folder), config)

    ctx.step("vision graph")
    vision = export_vision(model, ctx.out_dir / VISION_FILE)
    add_vision_component(ctx, ctx.out_dir / VISION_FILE, vision)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    image_token_id = int(config.get("image_token_index", config.get("image_token_id")))
    image["image_token_id"] = image_token_id
    image["image_token"] = tokenizer.convert_ids_to_tokens(image_token_id)
    image["patch_embedding"] = save_patch_weights(model, ctx.out_dir, image_size(model))
    image["image_newline"] = _save_newline(model, ctx.out_dir)
    ctx.manifest["image"] = image

    lm_folder = split_text_model(model.model.language_model, model.lm_head, model.config.text_config,
                                 ctx.workdir / "text-model", folder)
    export_language_model(ctx, lm_folder, model, model.config.text_config.to_dict())
