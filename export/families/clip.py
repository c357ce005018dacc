"""CLIP and SigLIP: an image tower and a text tower that embed into one space (`CLIPModel`,
`SiglipModel`, e.g. openai/clip-vit-base-patch32, google/siglip-base-patch16-224).

Bundle (family "clip"):
- `image.onnx`: `patch_tokens` float32 [batch, tokens, D] -> `image_embeds` float32 [batch, dim],
  L2-normalized (CLIP: pooled CLS -> visual_projection; SigLIP: attention-pooling head). The tokens
  are the tower's patch embedding, which mmedge's kernel computes from the frame with the weights in
  `patch_embedding.safetensors` (see mmedge.export.patch_embedding).
- `text.onnx`: `input_ids` int64 [batch, seq] -> `text_embeds` float32 [batch, dim], L2-normalized
  (CLIP: the EOS position's state -> text_projection; SigLIP: the last position -> head). No
  attention mask: CLIP's text tower is causal and pools at the first EOS, so padding after it
  changes nothing; SigLIP is trained on, and run with, sequences padded to max_length without a mask.
- `tokenizer.json` and the manifest's "text" entry: max_length (tokens, specials included; longer
  texts are truncated keeping the end token) and padding ("longest": CLIP, "max_length": SigLIP),
  pad_token_id.
- the manifest's "clip" entry: kind ("clip" | "siglip"), embed_dim, logit_scale (the multiplier,
  i.e. exp of the model's logit_scale parameter), logit_bias (SigLIP; 0 for CLIP). Scores are
  `logit_scale * cos + logit_bias`: softmax over labels for CLIP, sigmoid per label for SigLIP.
- "image": the checkpoint's image preprocessing (mmedge.export.preprocessing.image_spec_from_hf).

Both towers are exported with torch.onnx.export(dynamo=True) from batch-2 samples, and their batch
(and sequence) dims are checked to be symbolic. fp16/int8 copies come from
`mmedge.export.vision.quantize_vision`; `--quant` picks the precision of both towers (int4 is
refused: there is no decoder here). `check_parity` compares the bundle, run by mmedge's runtime,
with the torch model; an fp32 bundle below cosine 0.99999 fails the export.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from mmedge.errors import ExportError, UnsupportedModelError

from ..context import ExportContext
from ..onnx_utils import graph_signature, quiet_torch_export
from ..preprocessing import image_spec_from_hf, read_image_processor_config
from ..text_spec import TOKENIZER_FILE, load_tokenizer
from .. import patch_embedding, vision
from ..vision import SAMPLE_BATCH, quantize_vision

IMAGE_FILE = "image.onnx"
TEXT_FILE = "text.onnx"
OPSET = 23
PRECISIONS = ("fp32", "fp16", "int8")
FP32_MIN_COSINE = 0.99999
PARITY_TEXTS = ("a photo of a cat.", "a diagram of a staircase next to a red door",
                "x", "the quick brown fox jumps over the lazy dog " * 3)
KINDS = {"clip": "clip", "siglip": "siglip"}  # config model_type -> manifest "clip.kind"


def load_reference(folder: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(folder), dtype="float32", trust_remote_code=False).eval()


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(p=2, dim=-1, keepdim=True)   # as CLIPModel/SiglipModel.forward do


def _pooled(output) -> torch.Tensor:
    """transformers 5 returns a model output whose pooler_output holds the projected features."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ImageTower(torch.nn.Module):
    """pixel_values [batch, 3, H, W] -> normalized image_embeds [batch, dim]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return _normalize(_pooled(self.model.get_image_features(pixel_values=pixel_values)))


class TextTower(torch.nn.Module):
    """input_ids [batch, seq] -> normalized text_embeds [batch, dim]."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return _normalize(_pooled(self.model.get_text_features(input_ids=input_ids)))


def _kind(model) -> str:
    kind = KINDS.get(getattr(model.config, "model_type", None))
    if kind is None:
        raise UnsupportedModelError(f"the clip recipe takes CLIPModel or SiglipModel, got "
                                    f"{type(model).__name__}.")
    return kind


def _tower_precision(ctx: ExportContext) -> str:
    """--quant names the precision of both towers (--vision-quant too, when --quant is left fp32)."""
    precision = ctx.precision if ctx.precision != "fp32" else ctx.vision_precision
    if precision not in PRECISIONS:
        raise ExportError(f"CLIP/SigLIP bundles are exported as {', '.join(PRECISIONS)}; "
                          f"'{precision}' applies to decoders only.")
    if ctx.precision != "fp32" and ctx.vision_precision not in ("fp32", ctx.precision):
        raise ExportError(f"--quant {ctx.precision} and --vision-quant {ctx.vision_precision} "
                          f"disagree; a CLIP bundle has one precision for both towers.")
    return precision


def _export_graph(wrapper: torch.nn.Module, sample: torch.Tensor, path: Path, input_name: str,
                  output_name: str, dynamic: dict[int, Any]) -> dict[str, list[dict[str, Any]]]:
    try:
        with torch.no_grad(), quiet_torch_export():
            program = torch.onnx.export(wrapper.eval(), (sample,), dynamo=True, opset_version=OPSET,
                                        input_names=[input_name], output_names=[output_name],
                                        dynamic_shapes=(dynamic,), verbose=False)
    except Exception as e:  # torch.export / onnx conversion failures are many types
        raise ExportError(f"torch.onnx.export of {path.name} failed: {e}") from e
    weight_bytes = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                       if v.const_value is not None)
    # Above 1.5 GB (ViT-H and up) the weights go to `<name>.data` beside the graph (protobuf caps
    # a file at 2 GB).
    program.save(path, external_data=weight_bytes > vision.EXTERNAL_DATA_BYTES)
    signature = graph_signature(onnx.load(str(path), load_external_data=False))
    checks = [(signature["inputs"][0], axis) for axis in dynamic] + [(signature["outputs"][0], 0)]
    for io, axis in checks:   # with static samples dynamo can specialize a dim silently
        if not isinstance(io["shape"][axis], str):
            raise ExportError(f"{path.name}: {io['name']} has a static dim {axis} "
                              f"({io['shape']}); it must be symbolic.")
    return signature


def _text_spec(ctx: ExportContext, kind: str, text_config: dict[str, Any]) -> dict[str, Any]:
    """tokenizer.json (as transformers built the fast tokenizer) + how texts are padded."""
    tokenizer = load_tokenizer(ctx.source.folder)
    if not tokenizer.is_fast:
        raise ExportError(f"The tokenizer in {ctx.source.folder} has no fast (tokenizers) version; "
                          f"mmedge's runtime needs tokenizer.json.")
    tokenizer.backend_tokenizer.save(str(ctx.out_dir / TOKENIZER_FILE))
    max_length = int(text_config.get("max_position_embeddings", 77))
    if 0 < (tokenizer.model_max_length or 0) < max_length:
        max_length = int(tokenizer.model_max_length)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id
    if pad_id is None:
        raise ExportError(f"The tokenizer in {ctx.source.folder} has neither a pad nor an end token.")
    special = {name: getattr(tokenizer, name) for name in
               ("bos_token", "eos_token", "pad_token", "unk_token")
               if getattr(tokenizer, name, None) is not None}
    return {
        "tokenizer_file": TOKENIZER_FILE,
        "special_tokens": special,
        "max_length": max_length,
        "context_length": max_length,            # what `mmedge info` shows for every family
        "padding": "longest" if kind == "clip" else "max_length",
        "pad_token_id": int(pad_id),
        "truncation": True,
    }


def _sample_ids(ctx: ExportContext, text: dict[str, Any]) -> torch.Tensor:
    """A batch-2 sample of real token ids, padded the bundle's way (seq > 1, below max_length)."""
    tokenizer = load_tokenizer(ctx.source.folder)
    ids = [tokenizer(t, truncation=True, max_length=text["max_length"])["input_ids"]
           for t in PARITY_TEXTS[:2]]
    length = max(map(len, ids)) if text["padding"] == "longest" else text["max_length"]
    return torch.tensor([row + [text["pad_token_id"]] * (length - len(row)) for row in ids])


def export(ctx: ExportContext) -> None:
    model = ctx.reference
    kind = _kind(model)
    precision = _tower_precision(ctx)
    config = ctx.source.config
    ctx.manifest["family"] = "clip"

    image = image_spec_from_hf(read_image_processor_config(ctx.source.folder), config["vision_config"])
    ctx.manifest["image"] = image
    text = _text_spec(ctx, kind, model.config.text_config.to_dict())
    ctx.manifest["text"] = text

    components: dict[str, Any] = {}
    h, w = image["image_size"]
    ctx.step("image graph")
    image["patch_embedding"] = patch_embedding.save_patch_weights(model, ctx.out_dir, (h, w))
    tokens = patch_embedding.sample_tokens(model, SAMPLE_BATCH)
    with patch_embedding.tokens_input(model):
        components["image"] = {"file": IMAGE_FILE, **_export_graph(
            ImageTower(model), tokens, ctx.workdir / IMAGE_FILE, patch_embedding.TOKENS_INPUT,
            "image_embeds", {0: torch.export.Dim("batch")})}
    ctx.step("text graph")
    ids = _sample_ids(ctx, text)
    seq = torch.export.Dim("seq", min=2, max=text["max_length"])
    components["text"] = {"file": TEXT_FILE, **_export_graph(
        TextTower(model), ids, ctx.workdir / TEXT_FILE, "input_ids", "text_embeds",
        {0: torch.export.Dim("batch"), 1: seq})}

    ctx.step(f"{precision} graphs")
    for name, comp in components.items():
        source, target = ctx.workdir / comp["file"], ctx.out_dir / comp["file"]
        if precision == "fp32":
            for part in source.parent.glob(source.name + "*"):   # the graph and its .data, if any
                part.replace(ctx.out_dir / part.name)
        else:
            quantize_vision(source, target, precision)
        comp["precision"] = precision
    ctx.manifest["components"] = components
    ctx.manifest["quantization"] = {"image": precision, "text": precision}

    with torch.no_grad():
        embeds = ImageTower(model)(torch.randn(1, 3, h, w))
    ctx.manifest["clip"] = {
        "kind": kind,
        "embed_dim": int(embeds.shape[-1]),
        "logit_scale": float(model.logit_scale.detach().exp().reshape(-1)[0]),
        "logit_bias": float(model.logit_bias.detach().reshape(-1)[0]) if kind == "siglip" else 0.0,
    }


def check_parity(ctx: ExportContext) -> dict[str, Any]:
    """The bundle run by mmedge's runtime against the torch model: lowest cosine of image and text
    embeddings, and the largest difference of label probabilities for one image."""
    import mmedge

    from ..parity import parity_image

    runtime = mmedge.load(ctx.out_dir, device="cpu", verify=False)
    model = ctx.reference
    images = [parity_image(), parity_image(97, 131)[::-1].copy()]
    texts = list(PARITY_TEXTS)
    ours_image = runtime.embed_images(images)
    ours_text = runtime.embed_texts(texts)
    with torch.no_grad():
        ref_image = ImageTower(model)(torch.from_numpy(runtime.preprocess(images))).numpy()
        ref_text = TextTower(model)(torch.from_numpy(runtime.tokenize(texts))).numpy()
    cos_image = float(np.min(np.sum(ref_image * ours_image, -1)))
    cos_text = float(np.min(np.sum(ref_text * ours_text, -1)))
    ref_probs = runtime.probabilities(ref_image @ ref_text.T)
    our_probs = runtime.probabilities(ours_image @ ours_text.T)
    result = {
        "image_cosine": cos_image, "text_cosine": cos_text,
        "max_prob_diff": float(np.abs(ref_probs - our_probs).max()),
        "images": len(images), "texts": len(texts),
    }
    precision = ctx.manifest["quantization"]["image"]
    if precision == "fp32" and min(cos_image, cos_text) < FP32_MIN_COSINE:
        raise ExportError(
            f"Parity check failed: the fp32 bundle's embeddings differ from torch's (lowest cosine: "
            f"image {cos_image:.7f}, text {cos_text:.7f}; required {FP32_MIN_COSINE}). This is a "
            f"bug in mmedge's export of this model; please report it.")
    if not (math.isfinite(cos_image) and math.isfinite(cos_text)):
        raise ExportError(f"Parity check failed: the {precision} bundle produced non-finite embeddings.")
    return result
