"""SmolVLM / Idefics3: a SigLIP-style tower at 512 px, a pixel-shuffle connector (scale factor 4:
1024 patches -> 64 tokens a tile) and a Llama text model (`Idefics3ForConditionalGeneration`:
SmolVLM-256M/500M/2.2B and Idefics3; `SmolVLMForConditionalGeneration`: SmolVLM2).

Bundle: `vision.onnx` (one tile's patch tokens -> encoder -> post-layernorm -> connector: [tiles,
64, text_hidden]), `patch_embedding.safetensors` (the tower's patch conv and position embeddings,
for mmedge's patch-embedding kernel), `embed.onnx` + `decoder.onnx` for the text model, and the
manifest's image entry with layout "idefics3": the image processor's resize/split parameters and
the prompt tokens the processor wraps every tile in (see mmedge.vision.layouts.idefics3).

Every tile the processor makes is a full tile (the image is resized to multiples of the tile side
first), so the pixel attention mask is all ones and the graph runs without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mmedge.errors import ExportError, UnsupportedModelError

from ..context import ExportContext
from ..language_model import export_language_model, split_text_model
from ..patch_embedding import TOKENS_INPUT, sample_tokens, save_patch_weights
from ..preprocessing import processor_getter, read_image_processor_config, read_processor_config
from ..text_spec import special_token_ids
from ..vision import add_vision_component, check_feature_shape, compare, trace_image_graph

VISION_FILE = "vision.onnx"
PROCESSOR_CLASSES = ("Idefics3ImageProcessor", "SmolVLMImageProcessor")
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
IMAGE_TOKEN = "<image>"
# Idefics3ImageProcessor's class defaults (transformers 5), for keys a config leaves out or nulls.
_DEFAULTS: dict[str, Any] = {
    "do_convert_rgb": True, "do_resize": True, "size": {"longest_edge": 4 * 364},
    "resample": 1, "do_image_splitting": True, "max_image_size": {"longest_edge": 364},
    "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
}


def load_reference(folder: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype="float32",
                                                       trust_remote_code=False).eval()


class TileEncoder(torch.nn.Module):
    """patch tokens [tiles, 1024, D] -> image features [tiles, 64, text_hidden], transformers'
    `get_image_features` for full tiles from the embeddings on."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        vision = model.model.vision_model
        self.encoder, self.post_layernorm = vision.encoder, vision.post_layernorm
        self.connector = model.model.connector

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(inputs_embeds=tokens, attention_mask=None).last_hidden_state
        return self.connector(self.post_layernorm(hidden))


def tokens_per_tile(config: Mapping[str, Any]) -> int:
    vision = config["vision_config"]
    side = int(vision["image_size"]) // int(vision["patch_size"])
    scale = int(config["scale_factor"])
    if side % scale:
        raise UnsupportedModelError(f"the tower's {side}x{side} patch grid does not divide by the "
                                    f"connector's scale_factor {scale}; this is not a SmolVLM layout.")
    return (side // scale) ** 2


def image_spec(processor: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """The manifest's image entry (without the token ids and patch embedding) from the image
    processor's config; refuses what the runtime's layout does not implement, naming the key."""
    get = processor_getter(processor, PROCESSOR_CLASSES, _DEFAULTS, "SmolVLM")

    def longest_edge(key: str) -> int:
        value = get(key)
        if not (isinstance(value, Mapping) and set(k for k, v in value.items() if v is not None)
                == {"longest_edge"}) or not isinstance(value["longest_edge"], int):
            raise UnsupportedModelError(
                f"the image processor's {key} is {value!r}; mmedge's SmolVLM layout implements "
                f"{{'longest_edge': N}} only. Set {key} to {{\"longest_edge\": N}} in "
                "preprocessor_config.json (or processor_config.json's image_processor).")
        return int(value["longest_edge"])

    vision = config["vision_config"]
    tile = longest_edge("max_image_size")
    if tile != int(vision["image_size"]):
        raise UnsupportedModelError(
            f"the image processor's max_image_size.longest_edge is {tile} but the vision tower takes "
            f"{vision['image_size']} px tiles; the configs disagree (set max_image_size to "
            f"{{\"longest_edge\": {vision['image_size']}}}).")
    spec = {
        "layout": "idefics3", "processor": "idefics3",
        "do_convert_rgb": bool(get("do_convert_rgb")), "do_resize": bool(get("do_resize")),
        "size": {"longest_edge": longest_edge("size")}, "resample": int(get("resample")),
        "do_image_splitting": bool(get("do_image_splitting")),
        "max_image_size": {"longest_edge": tile},
        "do_rescale": bool(get("do_rescale")), "rescale_factor": float(get("rescale_factor")),
        "do_normalize": bool(get("do_normalize")),
        "image_mean": [float(v) for v in get("image_mean")],
        "image_std": [float(v) for v in get("image_std")],
        "image_size": [tile, tile], "patch_size": int(vision["patch_size"]),
        "tokens_per_tile": tokens_per_tile(config),
    }
    if len(spec["image_mean"]) != 3 or len(spec["image_std"]) != 3:
        raise UnsupportedModelError("image_mean and image_std need 3 values (RGB).")
    return spec


def _check_position_ids(model: torch.nn.Module, tile: int) -> None:
    """The tower's embeddings give a full tile position ids 0..N-1 (transformers computes them by
    bucketing fractional coordinates); the kernel adds the position table in order."""
    embeddings = model.model.vision_model.embeddings
    side = tile // embeddings.patch_size
    with torch.no_grad():
        zeros = torch.zeros(1, 3, tile, tile)
        mask = torch.ones(1, side, side, dtype=torch.bool)
        positions = embeddings(zeros, mask)[0] - embeddings.patch_embedding.bias
    table = embeddings.position_embedding.weight.detach()
    if not torch.allclose(positions, table, atol=1e-5 * float(table.abs().max()) + 1e-7):
        raise UnsupportedModelError("the vision tower does not give a full tile the position ids "
                                    "0..N-1; mmedge's patch-embedding kernel cannot reproduce it.")


def _tokens(tokenizer, config: Mapping[str, Any]) -> dict[str, Any]:
    image_id = int(config["image_token_id"])
    found = special_token_ids(tokenizer, (FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN, IMAGE_TOKEN), "SmolVLM")
    if found[IMAGE_TOKEN] != image_id:
        raise ExportError(f"config.json's image_token_id is {image_id} but the tokenizer encodes "
                          f"{IMAGE_TOKEN} as {found[IMAGE_TOKEN]}; the checkpoint is inconsistent.")
    return {"image_token": IMAGE_TOKEN, "image_token_id": image_id,
            "fake_image_token": FAKE_IMAGE_TOKEN, "global_image_token": GLOBAL_IMAGE_TOKEN}


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    folder, config = ctx.source.folder, ctx.source.config
    ctx.manifest["family"] = "idefics3"
    image = image_spec(read_image_processor_config(folder), config)
    seq_len = read_processor_config(folder).get("image_seq_len")
    if seq_len is not None and int(seq_len) != image["tokens_per_tile"]:
        raise UnsupportedModelError(
            f"processor_config.json's image_seq_len is {seq_len} but the tower and connector make "
            f"{image['tokens_per_tile']} tokens a tile; the configs disagree.")
    tile = image["image_size"][0]
    _check_position_ids(model, tile)

    ctx.step("vision graph")
    vision_path = ctx.out_dir / VISION_FILE
    io = trace_image_graph(TileEncoder(model).eval(), sample_tokens(model, 2), vision_path,
                           TOKENS_INPUT)
    check_feature_shape(io, image["tokens_per_tile"], config["text_config"]["hidden_size"])
    add_vision_component(ctx, vision_path, io)

    from transformers import AutoTokenizer

    image.update(_tokens(AutoTokenizer.from_pretrained(str(folder)), config))
    image["patch_embedding"] = save_patch_weights(model, ctx.out_dir, (tile, tile))
    ctx.manifest["image"] = image

    lm_folder = split_text_model(model.model.text_model, model.lm_head, model.config.text_config,
                                 ctx.workdir / "text-model", folder)
    export_language_model(ctx, lm_folder, model, model.config.text_config.to_dict())


def reference_inputs(runtime, ids: list[int], images: list[Any]) -> dict[str, Any]:
    """transformers' inputs for one prompt: every tile of every image in one row of
    pixel_values [1, tiles, 3, H, W] (the pixel attention mask is all ones, so left out)."""
    inputs: dict[str, Any] = {"input_ids": torch.tensor([ids])}
    if images:
        inputs["pixel_values"] = torch.from_numpy(runtime.preprocess(images))[None]
    return inputs


def check_vision(model: torch.nn.Module, onnx_path: Path, pixel_values: np.ndarray) -> dict:
    """The vision graph on transformers' own patch embedding of `pixel_values` [tiles, 3, H, W]
    vs transformers' get_image_features; `compare`'s figures."""
    import onnxruntime as ort

    pv = torch.as_tensor(np.asarray(pixel_values, dtype=np.float32))
    with torch.no_grad():
        ref = model.get_image_features(pv[None]).pooler_output
        ref = torch.cat(list(ref)).reshape(len(pv), -1, ref[0].shape[-1]).numpy()
        side = pv.shape[-1] // model.model.vision_model.embeddings.patch_size
        mask = torch.ones(len(pv), side, side, dtype=torch.bool)
        tokens = model.model.vision_model.embeddings(pv, mask).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {TOKENS_INPUT: tokens})[0]
    if got.shape != ref.shape:
        raise ExportError(f"vision graph output {got.shape} != transformers' {ref.shape}")
    return compare(ref, got)
