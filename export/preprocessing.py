"""Export-time translation of a Hugging Face `preprocessor_config.json` into the manifest's "image"
entry (the runtime side is `mmedge.preprocess.ImagePreprocessor`).

Pure Python: it reads the config the way transformers 5 does (class defaults for missing or null
keys, old-style integer sizes) without importing transformers. The image-token fields of the
entry are the family recipe's business, not this module's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmedge.errors import ExportError, UnsupportedModelError

__all__ = ["image_spec_from_hf", "read_image_processor_config"]

# Each processor's class defaults in transformers 5 (CLIPImageProcessor, SiglipImageProcessor),
# used where the config leaves a key out or sets it to null, as transformers does.
_OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
_OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
_DEFAULTS: dict[str, dict[str, Any]] = {
    "clip": {
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": 224},
        "resample": 3,  # BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": _OPENAI_CLIP_MEAN,
        "image_std": _OPENAI_CLIP_STD,
    },
    "siglip": {
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": 224, "width": 224},
        "resample": 3,  # BICUBIC
        "do_center_crop": False,
        "crop_size": None,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
    },
}

# Class names in `image_processor_type` / `feature_extractor_type`, without a Fast or Pil suffix.
_PROCESSOR_CLASSES = {
    "CLIPImageProcessor": "clip",
    "CLIPFeatureExtractor": "clip",
    "SiglipImageProcessor": "siglip",
}
# Used when the config names no class, as transformers falls back on the model type.
_VISION_MODEL_TYPES = {
    "clip_vision_model": "clip",
    "clip": "clip",
    "siglip_vision_model": "siglip",
    "siglip": "siglip",
}


def read_image_processor_config(folder: Path) -> dict[str, Any]:
    """The checkpoint's image processor config, wherever it is: `preprocessor_config.json`
    (transformers 4 and most of the Hub) or the "image_processor" entry of
    `processor_config.json` (what `save_pretrained` of a processor writes in transformers 5).
    Where both exist the standalone file wins, as in transformers' AutoImageProcessor."""
    standalone = folder / "preprocessor_config.json"
    if standalone.is_file():
        return _read_json(standalone)
    nested = folder / "processor_config.json"
    if nested.is_file():
        entry = _read_json(nested).get("image_processor")
        if isinstance(entry, dict):
            return entry
        raise ExportError(f"{nested} has no \"image_processor\" entry and there is no "
                          "preprocessor_config.json beside it, so the image preprocessing cannot be "
                          "known. Save the processor with the model (processor.save_pretrained).")
    raise ExportError(f"{folder} has neither preprocessor_config.json nor processor_config.json, so "
                      "the image preprocessing cannot be known. Save the processor with the model "
                      "(processor.save_pretrained), or copy those files from the original checkpoint.")


def processor_getter(processor: Mapping[str, Any], classes: tuple[str, ...],
                     defaults: Mapping[str, Any], recipe: str, assumed: str = ""):
    """Refuse an image processor class (`image_processor_type`, its Fast/Pil suffix dropped;
    `assumed` where the config names none) that the recipe does not reproduce; return a getter
    of the config's keys, falling back to `defaults` (the class's) where a key is absent or null."""
    name = str(processor.get("image_processor_type") or assumed)
    if name.removesuffix("Fast").removesuffix("Pil") not in classes:
        raise UnsupportedModelError(f"the image processor is {name or 'not named'}; mmedge's {recipe} "
                                    f"recipe reproduces {', '.join(classes)}.")

    def get(key: str) -> Any:
        value = processor.get(key)
        return defaults[key] if value is None else value

    return get


def read_processor_config(folder: Path) -> dict[str, Any]:
    """`processor_config.json` (the processor's own keys, e.g. image_seq_len), or {}."""
    path = folder / "processor_config.json"
    return _read_json(path) if path.is_file() else {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ExportError(f"{path} cannot be read as JSON ({exc}); fix or re-download it.") from None
    if not isinstance(value, dict):
        raise ExportError(f"{path} holds a JSON {type(value).__name__}, not an object; fix or "
                          "re-download it.")
    return value


def image_spec_from_hf(
    preprocessor_config: Mapping[str, Any], vision_config: Mapping[str, Any]
) -> dict[str, Any]:
    """The manifest "image" entry, minus image_token/image_token_id/num_image_tokens.

    `preprocessor_config` is the parsed `preprocessor_config.json`; `vision_config` the vision
    tower's config (`config.json`'s "vision_config"), which gives image_size and patch_size.
    Raises UnsupportedModelError for image processors other than CLIP's and SigLIP's, for size
    rules the runtime does not implement, and when the processed image would not be the size the
    vision tower takes.
    """
    processor = _processor_kind(preprocessor_config, vision_config)
    defaults = _DEFAULTS[processor]

    def get(key: str) -> Any:
        value = preprocessor_config.get(key)
        return defaults[key] if value is None else value

    # Both classes set default_to_square=False: an integer size means the shortest edge (even for
    # SigLIP, whose configs normally give height and width), while an integer crop_size is square.
    size = _size_dict(get("size"), int_means="shortest_edge", what="size")
    do_center_crop = bool(get("do_center_crop"))
    crop = get("crop_size")
    crop_size = _size_dict(crop, int_means="square", what="crop_size") if crop is not None else None
    if do_center_crop and crop_size is None:
        raise UnsupportedModelError(
            "preprocessor_config.json asks for a center crop but gives no crop_size."
        )

    spec: dict[str, Any] = {
        "processor": processor,
        "do_convert_rgb": bool(get("do_convert_rgb")),
        "do_resize": bool(get("do_resize")),
        "size": size,
        "resample": int(get("resample")),
        "do_center_crop": do_center_crop,
        "crop_size": crop_size,
        "do_rescale": bool(get("do_rescale")),
        "rescale_factor": float(get("rescale_factor")),
        "do_normalize": bool(get("do_normalize")),
        "image_mean": _per_channel(get("image_mean"), "image_mean"),
        "image_std": _per_channel(get("image_std"), "image_std"),
        "image_size": _image_size(vision_config),
        "patch_size": int(vision_config["patch_size"]),
    }
    _check_output_size(spec)
    return spec


def _processor_kind(preprocessor_config: Mapping[str, Any], vision_config: Mapping[str, Any]) -> str:
    name = preprocessor_config.get("image_processor_type")
    name = name or preprocessor_config.get("feature_extractor_type")
    if name:
        base = name.removesuffix("Fast").removesuffix("Pil")
        if base in _PROCESSOR_CLASSES:
            return _PROCESSOR_CLASSES[base]
    else:
        kind = _VISION_MODEL_TYPES.get(str(vision_config.get("model_type")))
        if kind:
            return kind
        name = f"none named (vision model type {vision_config.get('model_type')!r})"
    supported = ", ".join(sorted(_PROCESSOR_CLASSES))
    raise UnsupportedModelError(
        f"mmedge cannot reproduce this model's image processor ({name}); supported: {supported} "
        "(and their Fast variants)."
    )


def _size_dict(value: Any, *, int_means: str, what: str) -> dict[str, int]:
    """transformers' `get_size_dict`, limited to the two size rules the runtime implements."""
    if isinstance(value, int) and not isinstance(value, bool):
        if int_means == "shortest_edge":
            return {"shortest_edge": value}
        return {"height": value, "width": value}
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return {"height": int(value[0]), "width": int(value[1])}
    if isinstance(value, Mapping):
        value = {k: v for k, v in value.items() if v is not None}  # a serialized SizeDict may hold nulls
        if set(value) == {"shortest_edge"}:
            return {"shortest_edge": int(value["shortest_edge"])}
        if set(value) == {"height", "width"}:
            return {"height": int(value["height"]), "width": int(value["width"])}
    raise UnsupportedModelError(
        f"preprocessor_config.json has {what}={value!r}; mmedge supports {{'shortest_edge': N}} "
        "or {'height': H, 'width': W} (or an int / [H, W])."
    )


def _per_channel(value: Any, what: str) -> list[float]:
    values = [float(value)] * 3 if isinstance(value, (int, float)) else [float(v) for v in value]
    if len(values) != 3:
        raise UnsupportedModelError(
            f"preprocessor_config.json has {what}={value!r}; RGB needs 3 values."
        )
    return values


def _image_size(vision_config: Mapping[str, Any]) -> list[int]:
    size = vision_config["image_size"]
    if isinstance(size, int):
        return [size, size]
    return [int(size[0]), int(size[1])]


def _check_output_size(spec: dict[str, Any]) -> None:
    """The processed image must be exactly what the vision tower takes."""
    if spec["do_center_crop"]:
        out = [spec["crop_size"]["height"], spec["crop_size"]["width"]]
    elif spec["do_resize"] and "height" in spec["size"]:
        out = [spec["size"]["height"], spec["size"]["width"]]
    else:
        raise UnsupportedModelError(
            "this image processor keeps each image's aspect ratio without cropping, so images "
            "come out in varying sizes; mmedge's vision graphs take one fixed size."
        )
    if out != spec["image_size"]:
        raise UnsupportedModelError(
            f"the image processor produces {out[0]}x{out[1]} images but the vision tower takes "
            f"{spec['image_size'][0]}x{spec['image_size'][1]}; the configs disagree."
        )
