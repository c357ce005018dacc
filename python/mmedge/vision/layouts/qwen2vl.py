"""The "qwen2vl" image layout (Qwen2-VL, Qwen2.5-VL, Qwen3-VL), as transformers'
Qwen2VLImageProcessor (its Pillow path), the Qwen-VL processors and models lay an image out:

1. `smart_resize`: the image is resized (Pillow, BICUBIC, on the uint8 image) to the nearest
   multiple of patch x merge (28 px; 32 for Qwen3-VL) on each side whose area lies within
   [min_pixels, max_pixels] (the manifest's, or the caller's `max_pixels`);
2. one run of the vision graph per image: the patch-embedding kernel projects the resized image's
   patches (the Conv3d folded to 2D, see export/qwen_vl.py), the tokens are put in the
   processor's 2x2-merge order (Qwen2.5-VL: then window by window), with each patch's (row,
   column) and the generation's extras (the attention windows; Qwen3-VL's position-grid taps);
3. the prompt: each `<|image_pad|>` becomes grid_h * grid_w / merge^2 of them (between the
   template's own <|vision_start|> and <|vision_end|>), and the LLM's positions are M-RoPE's:
   three ids per token (temporal, row, column), the text after an image continuing from the
   image's largest position + 1 (`rope_positions`, transformers' get_rope_index).

Tokens per image: (H / 28) * (W / 28) for the resized H x W (Qwen3-VL: / 32), e.g. a 640x480
photo under the default budget is 644x476 -> 23 x 17 = 391 tokens in Qwen2/2.5-VL and
640x480 -> 20 x 15 = 300 in Qwen3-VL; `max_pixels=200704` (256 merged patches) caps any image at
about 256 tokens.

Nothing here imports torch or `mmedge.export`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from mmedge.errors import BundleError, PromptError
from mmedge.vision.layouts import ImageLayout, ImagePlan
from mmedge.vision.layouts import qwen_geometry as geometry

GENERATIONS = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
# what each generation's vision graph takes (export/qwen_vl.py)
_INPUTS = {
    "qwen2_vl": ("patch_tokens", "patch_positions"),
    "qwen2_5_vl": ("patch_tokens", "patch_positions", "window_gather", "window_scatter"),
    "qwen3_vl": ("patch_tokens", "patch_positions", "pos_index", "pos_weight"),
}


class QwenVLLayout(ImageLayout):
    name = "qwen2vl"

    def __init__(self, spec: Mapping[str, Any], tokenizer: Any, root, *, max_pixels: int | None = None):
        super().__init__(spec, tokenizer, root)
        try:
            self.generation = str(spec["generation"])
            self.patch = int(spec["patch_size"])
            self.merge = int(spec["merge_size"])
            self.temporal = int(spec["temporal_patch_size"])
            self.min_pixels = int(spec["min_pixels"])
            self.max_pixels = int(spec["max_pixels"])
            self.inputs = tuple(spec["vision_inputs"])
            self.window_size = int(spec.get("window_size") or 0)
            self.grid_side = int(spec.get("num_grid_per_side") or 0)
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the manifest's Qwen-VL image entry is malformed ({exc!r:.80}); "
                              "re-run `mmedge export`.") from None
        if self.generation not in GENERATIONS or self.inputs != _INPUTS[self.generation]:
            raise BundleError(f"the manifest's Qwen-VL image entry names generation "
                              f"{self.generation!r:.40} with vision inputs {list(self.inputs)!r:.120}; "
                              f"this mmedge knows {', '.join(f'{g}: {list(i)}' for g, i in _INPUTS.items())}. "
                              "Re-run `mmedge export` (or upgrade mmedge).")
        if self.patch < 1 or self.merge < 1 or (self.generation == "qwen2_5_vl" and self.window_size
                                                < self.patch * self.merge) \
                or (self.generation == "qwen3_vl" and self.grid_side < 1):
            raise BundleError("the manifest's Qwen-VL grid metadata is inconsistent (patch_size "
                              f"{self.patch}, merge_size {self.merge}, window_size {self.window_size}, "
                              f"num_grid_per_side {self.grid_side}); re-run `mmedge export`.")
        self.factor = self.patch * self.merge
        embedding = spec.get("patch_embedding") or {}
        if embedding.get("patch_size") != self.patch or self.max_pixels < self.factor ** 2 \
                or self.min_pixels > self.max_pixels:
            raise BundleError(f"the manifest's Qwen-VL grid metadata is inconsistent (patch_size "
                              f"{self.patch} but the patch embedding's {embedding.get('patch_size')!r:.20}; "
                              f"min/max pixels {self.min_pixels}/{self.max_pixels} for "
                              f"{self.factor}x{self.factor}-px merged patches); re-run `mmedge export`.")
        if max_pixels is not None:
            self.max_pixels = check_max_pixels(max_pixels, self.factor, self.min_pixels)

    @property
    def tile_spec(self) -> Mapping[str, Any]:
        """The preprocessing every image gets, at a size set per image (embed_resized)."""
        side = self.factor
        return {**self.spec, "processor": "siglip", "do_resize": True,
                "size": {"height": side, "width": side}, "do_center_crop": False,
                "crop_size": None, "image_size": None}

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        return geometry.smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def plan(self, image: Image.Image, *, tiles: bool = True) -> ImagePlan:
        h, w = self.resized_size(image.height, image.width)
        gh, gw = h // self.patch, w // self.patch
        n = gh * gw // (self.merge * self.merge)
        return ImagePlan(tiles=[image] if tiles else [], token_ids=[self.image_token_id] * n,
                         num_slots=n, grid={"thw": (1, gh, gw), "resized": (h, w)},
                         size=(image.height, image.width))

    def describe(self, plan: ImagePlan) -> str:
        h, w = plan.grid["resized"]
        return f"resized to {w}x{h}: {plan.num_slots} image tokens"

    # -- the vision graph's run -----------------------------------------------------------------
    def vision_feeds(self, plan: ImagePlan, vision_input: Any) -> list[dict[str, np.ndarray]]:
        h, w = plan.grid["resized"]
        _, gh, gw = plan.grid["thw"]
        tokens = vision_input.embed_resized(plan.tiles[0], h, w)          # row-major patches
        feed = {"patch_tokens": geometry.merge_order(tokens, gh, gw, self.merge),
                "patch_positions": geometry.patch_positions(gh, gw, self.merge)}
        if self.generation == "qwen2_5_vl":
            index, window_ids = geometry.window_index(gh, gw, self.merge, self.window_size, self.patch)
            for key in ("patch_tokens", "patch_positions"):
                feed[key] = geometry.window_permute(feed[key], index, self.merge)
            feed["window_gather"], feed["window_scatter"] = window_rows(window_ids)
            plan.grid["window_index"] = index
        if self.generation == "qwen3_vl":
            index, weight = geometry.pos_embed_interpolation(gh, gw, self.merge, self.grid_side)
            feed["pos_index"] = np.ascontiguousarray(index.T, dtype=np.int64)
            feed["pos_weight"] = np.ascontiguousarray(weight.T, dtype=np.float32)
        return [feed]

    def features(self, plan: ImagePlan, outputs: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
        """The graph's image_features [slots, hidden] back in the image's order; Qwen3-VL's
        DeepStack features follow along the last axis ([slots, (1 + layers) * hidden])."""
        (run,) = outputs
        features = run[0]
        if len(features) != plan.num_slots:
            raise BundleError(f"the image graph gave {len(features)} feature rows for an image "
                              f"with {plan.num_slots} image tokens; the bundle is damaged. "
                              "Re-run `mmedge export`.")
        parts = [features] + (list(run[1]) if len(run) > 1 else [])
        if "window_index" in plan.grid:
            order = np.argsort(plan.grid["window_index"])
            parts = [part[order] for part in parts]
        return np.concatenate(parts, axis=-1) if len(parts) > 1 else parts[0]

    def pixel_values(self, plan: ImagePlan, preprocessor: Any = None) -> np.ndarray:
        """transformers' pixel_values rows for the image [grid_h * grid_w, 3 * T * P * P]
        (what the reference model takes; the bundle's own path fuses this into the kernel)."""
        from mmedge.vision.preprocess import ImagePreprocessor

        h, w = plan.grid["resized"]
        spec = {**self.tile_spec, "size": {"height": h, "width": w}, "image_size": [h, w]}
        pixels = ImagePreprocessor(spec, max_pixels=None)([plan.tiles[0]])[0]
        return geometry.flat_pixel_values(pixels, self.patch, self.temporal, self.merge)

    # -- the LLM's positions --------------------------------------------------------------------
    def rope_positions(self, ids: Sequence[int], plans: Sequence[ImagePlan]) -> np.ndarray:
        """M-RoPE position ids [3, len(ids)] of a prompt whose images have `plans`."""
        return geometry.rope_positions(ids, [plan.grid["thw"] for plan in plans],
                                       self.image_token_id, self.merge)


def window_rows(window_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Windows (contiguous runs of equal ids, in window order) as rows of a gather: int64
    [windows, longest] patch indices padded with N, and each patch's flat slot [N] in it."""
    n = len(window_ids)
    starts = np.flatnonzero(np.r_[True, window_ids[1:] != window_ids[:-1]])
    lengths = np.diff(np.r_[starts, n])
    valid = np.arange(lengths.max())[None, :] < lengths[:, None]
    gather = np.full(valid.shape, n, dtype=np.int64)
    gather[valid] = np.arange(n)             # row-major over the valid slots: patches in order
    return gather, np.flatnonzero(valid.ravel()).astype(np.int64)


def check_max_pixels(max_pixels: Any, factor: int, min_pixels: int) -> int:
    """A caller's max_pixels, refused with the reason unless it holds one merged patch."""
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, np.integer)):
        raise PromptError(f"max_pixels must be a whole number of pixels, not {max_pixels!r:.40}.")
    if max_pixels < factor * factor:
        raise PromptError(f"max_pixels {max_pixels} is below one merged patch of this model "
                          f"({factor}x{factor} = {factor * factor} px); use at least {factor * factor}.")
    if max_pixels < min_pixels:
        raise PromptError(f"max_pixels {max_pixels} is below the model's min_pixels {min_pixels}; "
                          f"use at least {min_pixels}.")
    return int(max_pixels)

