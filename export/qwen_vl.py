"""What the Qwen-VL recipes share (Qwen2-VL, Qwen2.5-VL, Qwen3-VL; one recipe file each under
export/families/ says what differs).

The vision graph starts after the patch embedding. Qwen's patch embedding is a Conv3d over
`temporal_patch_size` (2) frames of 14x14 (16x16 for Qwen3-VL) pixels; a still image is that
frame repeated, so the conv over the pair equals a 2D conv with the kernel's temporal slices
summed: W2d[d, c, y, x] = sum_t W3d[d, c, t, y, x]. mmedge's patch-embedding kernel applies that
2D kernel straight from the uint8 image (Pillow-exact bicubic resize to the smart_resize size,
rescale, normalize, project; Qwen3-VL's conv bias included), row-major, and the runtime reorders
the tokens into transformers' 2x2-merge order (mmedge.vision.layouts.qwen2vl).

Graph inputs, one image a run (N patches, a dynamic axis):
  patch_tokens    float32 [N, D]  the folded conv's output, in merge order (Qwen2.5-VL: window order)
  patch_positions int64   [N, 2]  each patch's (row, column), in the same order; the graph turns
                                  them into the tower's 2D rotary tables with its own module
  window_gather   int64 [windows, size]  Qwen2.5-VL: the patches of each attention window (padded
  window_scatter  int64 [N]              with N), and each patch's slot among them: the windowed
                                  layers attend within a window, the `fullatt_block_indexes` ones
                                  over all
  pos_index       int64   [N, 4]  Qwen3-VL: the learned position grid's bilinear taps ...
  pos_weight      float32 [N, 4]  ... and their weights (transformers' interpolation, precomputed)
Outputs: `image_features` float32 [N/4, text_hidden] (the merger's rows), and for Qwen3-VL
`deepstack_features` float32 [layers, N/4, text_hidden] (DeepStack's mergers at the vision layers
`deepstack_visual_indexes`), which the decoder adds to its hidden states at the image positions
after its first layers (export/deepstack.py).

Attention is written here rather than called from transformers: transformers splits the sequence
by `cu_seqlens` with `.tolist()`, which cannot be traced; one image a run needs no split (full
attention), and windows become rows of a gather (`_window_attention`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from mmedge.errors import ExportError, UnsupportedModelError

from .context import ExportContext
from .language_model import export_language_model
from .onnx_utils import quiet_torch_export
from .patch_embedding import PATCH_FILE
from .preprocessing import processor_getter, read_image_processor_config
from .vision import EXTERNAL_DATA_BYTES, value_info, add_vision_component

VISION_FILE = "vision.onnx"
PROCESSOR_CLASSES = ("Qwen2VLImageProcessor",)
IMAGE_TOKEN = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
# Qwen2VLImageProcessor's class defaults (transformers 5) for keys a config leaves out
_DEFAULTS: dict[str, Any] = {
    "do_convert_rgb": True, "do_resize": True, "resample": 3, "do_rescale": True,
    "rescale_factor": 1 / 255, "do_normalize": True,
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "min_pixels": 56 * 56, "max_pixels": 28 * 28 * 1280,
    "patch_size": 14, "temporal_patch_size": 2, "merge_size": 2,
}


def load_reference(folder: Path):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(str(folder), dtype="float32",
                                                       trust_remote_code=False).eval()


# -- the vision graph --------------------------------------------------------------------------
def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """transformers' apply_rotary_pos_emb_vision for one of q/k [N, heads, hd] (in float32)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def _qkv(attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
    """The block's q, k, v [N, heads, hd], q and k rotated."""
    q, k, v = attn.qkv(x).reshape(x.shape[0], 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    return _rotate(q, cos, sin), _rotate(k, cos, sin), v


def _attention(attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor,
               sin: torch.Tensor) -> torch.Tensor:
    """Full attention over the image's patches."""
    n = x.shape[0]
    q, k, v = (t.transpose(0, 1)[None] for t in _qkv(attn, x, cos, sin))   # [1, heads, N, hd]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=attn.scaling)
    return attn.proj(out[0].transpose(0, 1).reshape(n, -1))


def _window_attention(attn: torch.nn.Module, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      gather: torch.Tensor, scatter: torch.Tensor) -> torch.Tensor:
    """Attention within windows (Qwen2.5-VL): the patches of each window gathered into a row of
    `gather` [windows, size] (padded with N, a zero row), attention per row with the padding
    masked out, and each patch's output taken back from its slot `scatter` [N]. Costs N x size
    scores a head instead of N x N (a 1280x720 image: 4,800 patches, windows of 64)."""
    n = x.shape[0]
    padded = [torch.cat([t, t.new_zeros(1, *t.shape[1:])]) for t in _qkv(attn, x, cos, sin)]
    q, k, v = (t[gather].permute(0, 2, 1, 3) for t in padded)               # [windows, heads, size, hd]
    valid = (gather < n)[:, None, None, :]
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=valid,
                                                           scale=attn.scaling)
    out = out.permute(0, 2, 1, 3).reshape(-1, x.shape[1])[scatter]
    return attn.proj(out)


class VisionGraph(torch.nn.Module):
    """One image's patch tokens (+ positions and the generation's extras) -> its features; the
    tower of transformers' `get_image_features` from the patch embedding on (see the module doc)."""

    def __init__(self, visual: torch.nn.Module, inputs: Sequence[str], *,
                 windowed_layers: Sequence[int] = (), deepstack_layers: Sequence[int] = ()):
        super().__init__()
        self.visual, self.inputs = visual, list(inputs)
        self.windowed, self.deepstack = set(windowed_layers), list(deepstack_layers)

    def forward(self, *args: torch.Tensor):
        given = dict(zip(self.inputs, args))
        hidden, positions = given["patch_tokens"], given["patch_positions"]
        visual = self.visual
        if "pos_index" in given:     # Qwen3-VL: learned positions, bilinearly resampled
            taps = visual.pos_embed(given["pos_index"]) * given["pos_weight"][:, :, None]
            hidden = hidden + taps.sum(1)
        cos, sin = visual.rotary_pos_emb(hidden, positions)
        deepstack = []
        for index, block in enumerate(visual.blocks):
            x = block.norm1(hidden)
            if index in self.windowed:
                hidden = hidden + _window_attention(block.attn, x, cos, sin, given["window_gather"],
                                                    given["window_scatter"])
            else:
                hidden = hidden + _attention(block.attn, x, cos, sin)
            hidden = hidden + block.mlp(block.norm2(hidden))
            if index in self.deepstack:
                merger = visual.deepstack_merger_list[self.deepstack.index(index)]
                deepstack.append(merger(hidden))
        features = visual.merger(hidden)
        return (features, torch.stack(deepstack)) if deepstack else features


def sample_inputs(names: Sequence[str], dim: int, grid: tuple[int, int] = (8, 12)) -> tuple:
    """Trace-time inputs for one image of `grid` patches (both sides even, N = 96 > 2 so the
    dynamic axis is not specialised)."""
    gh, gw = grid
    n = gh * gw
    generator = torch.Generator().manual_seed(0)
    rows, cols = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    samples = {
        "patch_tokens": torch.randn(n, dim, generator=generator),
        "patch_positions": torch.from_numpy(np.stack([rows.ravel(), cols.ravel()], -1)),
        "window_gather": torch.arange(n).reshape(n // 16, 16),
        "window_scatter": torch.arange(n),
        "pos_index": torch.randint(0, 4, (n, 4), generator=generator),
        "pos_weight": torch.rand(n, 4, generator=generator),
    }
    return tuple(samples[name] for name in names)


def trace_vision(graph: VisionGraph, dim: int, out_path: Path, output_names: Sequence[str]) -> dict:
    """torch.onnx (dynamo) export of `graph` with the patch axis dynamic; the saved graph's
    inputs and outputs as the manifest records them."""
    import onnx

    sample = sample_inputs(graph.inputs, dim)
    patches = torch.export.Dim("patches", min=4)
    windows = {0: torch.export.Dim("windows"), 1: torch.export.Dim("window_size")}
    shapes = tuple(windows if name == "window_gather" else {0: patches} for name in graph.inputs)
    try:
        with torch.no_grad(), quiet_torch_export():
            program = torch.onnx.export(graph, sample, dynamo=True, opset_version=18,
                                        input_names=list(graph.inputs),
                                        output_names=list(output_names),
                                        dynamic_shapes=(shapes,), verbose=False)  # *args: one entry
    except Exception as e:  # torch.export / onnx conversion failures are many types
        raise ExportError(f"torch.onnx.export of the Qwen-VL vision tower failed: {e}") from e
    weight_bytes = sum(v.const_value.nbytes for v in program.model.graph.initializers.values()
                       if v.const_value is not None)
    program.save(out_path, external_data=weight_bytes > EXTERNAL_DATA_BYTES)
    saved = onnx.load(str(out_path), load_external_data=False).graph
    io = {"inputs": value_info(saved.input), "outputs": value_info(saved.output)}
    if not all(isinstance(v["shape"][0], str) for v in io["inputs"]):
        raise ExportError(f"the exported vision graph has a static patch axis ({io}); "
                          "this is a bug in mmedge's export, please report it.")
    return io


def save_folded_patch_embedding(visual: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
    """The Conv3d patch embedding folded over its temporal axis (see the module doc), saved for
    the patch-embedding kernel; the manifest entry (num_tokens None: it varies per image)."""
    from safetensors.numpy import save_file

    proj = visual.patch_embed.proj
    weight = proj.weight.detach().float()
    if weight.ndim != 5 or weight.shape[1] != 3 or weight.shape[3] != weight.shape[4]:
        raise UnsupportedModelError(f"the patch embedding's kernel is {tuple(weight.shape)}; mmedge "
                                    "expects a Conv3d [D, 3, T, P, P].")
    tensors = {"weight": np.ascontiguousarray(weight.sum(dim=2).numpy())}
    if proj.bias is not None:
        tensors["bias"] = np.ascontiguousarray(proj.bias.detach().float().numpy())
    save_file(tensors, str(out_dir / PATCH_FILE))
    return {"file": PATCH_FILE, "num_tokens": None, "dim": int(weight.shape[0]),
            "patch_size": int(weight.shape[-1]), "temporal_folded": int(weight.shape[2])}


# -- the image entry ---------------------------------------------------------------------------
def image_spec(folder: Path, config: Mapping[str, Any], generation: str) -> dict[str, Any]:
    """The manifest's image entry from the image processor's config (preprocessor_config.json,
    legacy `min_pixels`/`max_pixels` keys or transformers 5's size {shortest_edge, longest_edge}),
    checked against the vision config; refuses what the layout does not implement, naming it."""
    processor = read_image_processor_config(folder)
    get = processor_getter(processor, PROCESSOR_CLASSES, _DEFAULTS, "Qwen-VL",
                           assumed="Qwen2VLImageProcessor")

    size = processor.get("size") or {}
    min_pixels = processor.get("min_pixels") or size.get("shortest_edge") or _DEFAULTS["min_pixels"]
    max_pixels = processor.get("max_pixels") or size.get("longest_edge") or _DEFAULTS["max_pixels"]
    vision = config["vision_config"]
    spec = {
        "layout": "qwen2vl", "processor": "siglip", "generation": generation,
        "do_convert_rgb": bool(get("do_convert_rgb")), "do_resize": bool(get("do_resize")),
        "resample": int(get("resample")),
        "do_rescale": bool(get("do_rescale")), "rescale_factor": float(get("rescale_factor")),
        "do_normalize": bool(get("do_normalize")),
        "image_mean": [float(v) for v in get("image_mean")],
        "image_std": [float(v) for v in get("image_std")],
        "patch_size": int(get("patch_size")), "temporal_patch_size": int(get("temporal_patch_size")),
        "merge_size": int(get("merge_size")),
        "min_pixels": int(min_pixels), "max_pixels": int(max_pixels),
    }
    if not spec["do_resize"]:
        raise UnsupportedModelError("the image processor has do_resize false; mmedge's Qwen-VL "
                                    "layout always resizes to the smart_resize size (as the "
                                    "model needs multiples of patch x merge). Set do_resize true.")
    for key, model_key in (("patch_size", "patch_size"), ("temporal_patch_size", "temporal_patch_size"),
                           ("merge_size", "spatial_merge_size")):
        if spec[key] != int(vision[model_key]):
            raise UnsupportedModelError(
                f"the image processor's {key} is {spec[key]} but the vision config's {model_key} "
                f"is {vision[model_key]}; the checkpoint's configs disagree.")
    factor = spec["patch_size"] * spec["merge_size"]
    if spec["max_pixels"] < factor * factor or spec["min_pixels"] > spec["max_pixels"]:
        raise UnsupportedModelError(
            f"the image processor's pixel budget (min {spec['min_pixels']}, max {spec['max_pixels']}) "
            f"cannot hold one merged patch of {factor}x{factor} px; fix preprocessor_config.json.")
    if len(spec["image_mean"]) != 3 or len(spec["image_std"]) != 3:
        raise UnsupportedModelError("image_mean and image_std need 3 values (RGB).")
    return spec


def token_ids(tokenizer, config: Mapping[str, Any]) -> dict[str, Any]:
    """The image placeholder and the tokens around it, checked against config.json."""
    from .text_spec import special_token_ids

    found = special_token_ids(tokenizer, (IMAGE_TOKEN, VISION_START, VISION_END), "Qwen-VL")
    for token, key in ((IMAGE_TOKEN, "image_token_id"), (VISION_START, "vision_start_token_id"),
                       (VISION_END, "vision_end_token_id")):
        if key in config and int(config[key]) != found[token]:
            raise ExportError(f"config.json's {key} is {config[key]} but the tokenizer encodes "
                              f"{token} as {found[token]}; the checkpoint is inconsistent.")
    return {"image_token": IMAGE_TOKEN, "image_token_id": found[IMAGE_TOKEN],
            "vision_start_token_id": found[VISION_START], "vision_end_token_id": found[VISION_END]}


# -- the whole export --------------------------------------------------------------------------
def export_qwen_vl(ctx: ExportContext, generation: str, graph: VisionGraph,
                   extra: dict[str, Any], decoder_folder: Path, deepstack_layers: int = 0) -> None:
    """The shared steps: image entry, vision graph, patch embedding, tokenizer, language model.
    `extra`: the generation's own image-entry keys; `decoder_folder`: what the decoder builder
    reads (the checkpoint, or a Qwen2.5-VL-shaped copy of its text model)."""
    from .text_spec import load_tokenizer

    model, folder, config = ctx.reference, ctx.source.folder, ctx.source.config
    ctx.manifest["family"] = generation
    image = image_spec(folder, config, generation)
    image.update(extra)
    image["vision_inputs"] = list(graph.inputs)

    ctx.step("vision graph")
    visual = model.model.visual
    outputs = ["image_features"] + (["deepstack_features"] if deepstack_layers else [])
    vision_path = ctx.out_dir / VISION_FILE
    io = trace_vision(graph.eval(), int(visual.patch_embed.proj.weight.shape[0]), vision_path, outputs)
    text_hidden = int(config["text_config"]["hidden_size"])
    if io["outputs"][0]["shape"][-1] != text_hidden:
        raise ExportError(f"the vision graph outputs {io['outputs'][0]['shape']}, expected "
                          f"[tokens, {text_hidden}]")
    add_vision_component(ctx, vision_path, io)
    image["patch_embedding"] = save_folded_patch_embedding(visual, ctx.out_dir)
    image.update(token_ids(load_tokenizer(folder), config))
    ctx.manifest["image"] = image

    text_config = model.config.text_config.to_dict()
    export_language_model(ctx, decoder_folder, model, text_config,
                          supported=(text_config["model_type"],))
    ctx.manifest["decoder"]["mrope"] = mrope_entry(model.config.text_config)
    if deepstack_layers:
        from .deepstack import add_deepstack_input

        import onnx

        from .onnx_utils import graph_signature

        decoder = ctx.manifest["components"]["decoder"]
        ctx.manifest["decoder"]["deepstack_layers"] = add_deepstack_input(
            ctx.out_dir / decoder["file"], deepstack_layers)
        decoder.update(graph_signature(onnx.load(str(ctx.out_dir / decoder["file"]),
                                                 load_external_data=False)))


def mrope_entry(text_config) -> dict[str, Any]:
    rope = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    section = rope.get("mrope_section")
    if not section:
        raise UnsupportedModelError("the text config has no rope_parameters.mrope_section; a "
                                    "Qwen-VL text model needs one (its config.json is incomplete).")
    return {"section": [int(s) for s in section], "interleaved": bool(rope.get("mrope_interleaved", False))}


def reference_inputs(runtime, ids: list[int], images: list[Any]) -> dict[str, Any]:
    """transformers' inputs for one prompt: pixel_values rows and image_grid_thw of every image
    (from the runtime's layout, which tests check against Qwen2VLImageProcessor) and the
    mm_token_type_ids the processor returns (1 at image tokens)."""
    inputs: dict[str, Any] = {"input_ids": torch.tensor([ids])}
    image_id = runtime.image_spec["image_token_id"]
    inputs["mm_token_type_ids"] = (inputs["input_ids"] == image_id).int()
    if images:
        plans = [runtime.plan_image(image) for image in images]
        inputs["pixel_values"] = torch.from_numpy(np.concatenate(
            [runtime.layout.pixel_values(plan) for plan in plans]))
        inputs["image_grid_thw"] = torch.tensor([plan.grid["thw"] for plan in plans])
    return inputs



def builder_folder(model: torch.nn.Module, generation: str, target: Path, tokenizer_folder: Path) -> Path:
    """A checkpoint onnxruntime-genai's builder reads for the decoder: the model's text model and
    LM head under the generation's class with a one-layer, 8-wide vision tower (the builder
    loads the whole checkpoint but uses only the text model; Qwen2-VL, which it does not know,
    is written as Qwen2.5-VL, whose text model is the same). Built on the meta device and
    assigned the real tensors, so no second copy of the weights is made."""
    import transformers

    from .language_model import TOKENIZER_FILES

    text = model.config.text_config.to_dict()
    if generation == "qwen3_vl":
        config_cls, model_cls = transformers.Qwen3VLConfig, transformers.Qwen3VLForConditionalGeneration
        vision = {"depth": 1, "hidden_size": 8, "intermediate_size": 8, "num_heads": 1,
                  "out_hidden_size": text["hidden_size"], "deepstack_visual_indexes": [0],
                  "num_position_embeddings": 4}
    else:
        config_cls = transformers.Qwen2_5_VLConfig
        model_cls = transformers.Qwen2_5_VLForConditionalGeneration
        vision = {"depth": 1, "hidden_size": 8, "intermediate_size": 8, "num_heads": 1,
                  "out_hidden_size": text["hidden_size"], "fullatt_block_indexes": [0]}
        text["model_type"] = "qwen2_5_vl_text"
    config = config_cls(text_config=text, vision_config=vision,
                        tie_word_embeddings=model.config.tie_word_embeddings,
                        **{k: getattr(model.config, k) for k in
                           ("image_token_id", "video_token_id", "vision_start_token_id",
                            "vision_end_token_id") if hasattr(model.config, k)})
    with torch.device("meta"):
        copy = model_cls(config)
    copy.model.visual.to_empty(device="cpu")
    copy.model.language_model.load_state_dict(model.model.language_model.state_dict(), assign=True)
    copy.lm_head.load_state_dict(model.lm_head.state_dict(), assign=True)
    if config.tie_word_embeddings:
        copy.tie_weights()
    target.mkdir(parents=True, exist_ok=True)
    copy.save_pretrained(str(target))
    for name in TOKENIZER_FILES + ("vocab.json", "merges.txt"):
        if (tokenizer_folder / name).exists():
            (target / name).write_bytes((tokenizer_folder / name).read_bytes())
    return target
