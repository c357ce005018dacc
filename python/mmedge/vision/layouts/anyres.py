"""The "anyres" image layout (LLaVA-OneVision), exactly as transformers 5.24 lays an image out:
LlavaOnevisionImageProcessorPil (the Pillow backend AutoImageProcessor picks without
torchvision), LlavaOnevisionProcessor's prompt expansion and LlavaOnevisionModel's
pack_image_features.

Tiles (`plan`), for an image of H x W:
1. the best resolution: of the checkpoint's pinpoints (h, w), the one that keeps the most of the
   image's pixels when it is scaled to fit, ties going to the one that wastes the fewest
   (`select_best_resolution`);
2. the image resized (Pillow, the config's filter, on uint8) to fit it: the constrained edge
   becomes the pinpoint's, the other min(ceil(edge * scale), pinpoint's) (`get_patch_output_size`),
   then zero-padded to the pinpoint, centred (the odd pixel after), and cut into tile-sized
   tiles, row-major;
3. the whole image resized to one tile, the base image, goes first;
4. each tile is rescaled and normalized (by the patch-embedding kernel, with the patch embedding).

Features (`assemble`, transformers' pack_image_features): the grid tiles' features are stitched
into one [C, rows * side, cols * side] map (side = tile / patch), the rows or columns the padding
added are cut off again (`unpad_image`, with its round(x, 7)); where that map holds more than
1.1^2 times `max_num_patches` tiles' worth of features ("anyres_max_9": 9), it is shrunk
bilinearly (torch's `interpolate(mode="bilinear")`, align_corners False) to
[int(h // ratio), int(w // ratio)]; the `image_newline` vector ends every row; the base image's
`side * side` features come first. The prompt gets as many image tokens as that gives, counted
the way LlavaOnevisionProcessor counts them (`_get_number_of_features`), and `assemble` checks
that the two agree.

Not reproduced: the multi-image mode transformers enters only when images are passed nested per
prompt (`images=[[a, b]]`: each image padded to a square, one tile and one newline). mmedge lays
every image out on its own, as the processor does for the flat list `images=[a, b]`.
Nothing here imports torch or `mmedge.export`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from mmedge.errors import BundleError
from mmedge.vision.layouts import ImageLayout, ImagePlan, resize_uint8, tile_preprocessing

MAX_SIDE = 8192        # the largest pinpoint side a manifest may ask for (as MAX_SPEC_SIDE)
MAX_PINPOINTS = 1024   # real checkpoints have 36


def select_best_resolution(height: int, width: int, pinpoints: list[tuple[int, int]]) -> tuple[int, int]:
    """transformers' `select_best_resolution` on an image of height x width."""
    best, best_effective, best_wasted = None, 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        down_w, down_h = int(width * scale), int(height * scale)
        effective = min(down_w * down_h, width * height)
        wasted = w * h - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (h, w), effective, wasted
    return best


def fit_size(height: int, width: int, target: tuple[int, int]) -> tuple[int, int]:
    """transformers' `get_patch_output_size`: the image resized to fit `target`, aspect kept."""
    target_h, target_w = target
    scale_w, scale_h = target_w / width, target_h / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_h), target_w
    return target_h, min(math.ceil(width * scale_h), target_w)


def unpadded_size(height: int, width: int, grid_h: int, grid_w: int) -> tuple[int, int]:
    """transformers' `unpad_image` (and the processor's copy of it): of a grid_h x grid_w feature
    map of an image padded to fit, the rows x cols that show the image."""
    if width / height > grid_w / grid_h:
        new_h = int(round(height * (grid_w / width), 7))
        return grid_h - (grid_h - new_h) // 2 * 2, grid_w
    new_w = int(round(width * (grid_h / height), 7))
    return grid_h, grid_w - (grid_w - new_w) // 2 * 2


def bilinear_resize(features: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """torch's `interpolate(x[None], [out_h, out_w], mode="bilinear")[0]` (align_corners False,
    no antialias) of [C, H, W] float32, in float32 and torch's order of operations."""

    def taps(n_in: int, n_out: int):
        scale = np.float32(n_in) / np.float32(n_out)
        src = np.maximum(scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5),
                         np.float32(0))
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = np.clip(src - lo.astype(np.float32), np.float32(0), np.float32(1))
        return lo, hi, (np.float32(1) - frac).astype(np.float32), frac.astype(np.float32)

    h0, h1, wh0, wh1 = taps(features.shape[1], out_h)
    w0, w1, ww0, ww1 = taps(features.shape[2], out_w)
    x = features.astype(np.float32, copy=False)
    top = x[:, h0][:, :, w0] * ww0 + x[:, h0][:, :, w1] * ww1
    bottom = x[:, h1][:, :, w0] * ww0 + x[:, h1][:, :, w1] * ww1
    return (top * wh0[:, None] + bottom * wh1[:, None]).astype(np.float32)


class AnyresLayout(ImageLayout):
    name = "anyres"

    def __init__(self, spec: Mapping[str, Any], tokenizer: Any, root):
        super().__init__(spec, tokenizer, root)
        try:
            self.tile = int(spec["size"]["height"])
            tile_w = int(spec["size"]["width"])
            self.resample = Image.Resampling(int(spec["resample"]))
            self.pinpoints = [(int(h), int(w)) for h, w in spec["image_grid_pinpoints"]]
            self.tokens_per_tile = int(spec["tokens_per_tile"])
            self.max_num_patches = int(spec["max_num_patches"])
            newline = spec["image_newline"]
            newline_file, newline_dim = str(newline["file"]), int(newline["dim"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the manifest's anyres image entry is malformed ({type(exc).__name__}: "
                              f"{exc}); re-export the bundle.") from None
        self.side = math.isqrt(max(self.tokens_per_tile, 0))
        problems = []
        if tile_w != self.tile or list(spec.get("image_size", ())) != [self.tile, self.tile]:
            problems.append(f"size {spec['size']} and image_size {spec.get('image_size')} are not "
                            "one square tile")
        if not 0 < self.tile <= MAX_SIDE:
            problems.append(f"the tile side {self.tile} is out of range")
        if not 0 < len(self.pinpoints) <= MAX_PINPOINTS or any(
                not (0 < h <= MAX_SIDE and 0 < w <= MAX_SIDE) or h % self.tile or w % self.tile
                for h, w in self.pinpoints):
            problems.append(f"the pinpoints are not 1 to {MAX_PINPOINTS} sizes of whole tiles of at "
                            f"most {MAX_SIDE} px")
        if self.side < 1 or self.side * self.side != self.tokens_per_tile:
            problems.append(f"tokens_per_tile {self.tokens_per_tile} is not a square grid of features")
        if self.max_num_patches < 1:
            problems.append(f"max_num_patches {self.max_num_patches} is not positive")
        if problems:
            raise BundleError("the manifest's anyres image entry is invalid: " + "; ".join(problems)
                              + ". Re-export the bundle.")
        self.newline = _load_newline(root, newline_file, newline_dim)
        self._tile_spec = tile_preprocessing(spec, self.tile)

    @property
    def tile_spec(self) -> Mapping[str, Any]:
        return self._tile_spec

    # -- geometry, shared by the plan and the assembly -------------------------------------------
    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of grid tiles for an image of height x width (the base image not counted)."""
        best_h, best_w = select_best_resolution(height, width, self.pinpoints)
        return best_h // self.tile, best_w // self.tile

    def feature_shape(self, height: int, width: int) -> tuple[int, int, bool]:
        """(rows, cols) of the grid's feature map after unpadding and the anyres_max shrink, and
        whether it was shrunk: what the image contributes besides its base tile."""
        rows, cols = self.grid(height, width)
        h, w = unpadded_size(height, width, rows * self.side, cols * self.side)
        ratio = math.sqrt(h * w / (self.max_num_patches * self.side ** 2))
        if ratio > 1.1:
            return int(h // ratio), int(w // ratio), True
        return h, w, False

    def num_tokens(self, height: int, width: int) -> int:
        """LlavaOnevisionProcessor's token count: the map, a newline per row, the base tile."""
        h, w, _ = self.feature_shape(height, width)
        return h * w + h + self.tokens_per_tile

    # -- the interface ---------------------------------------------------------------------------
    def plan(self, image: Image.Image, *, tiles: bool = True) -> ImagePlan:
        height, width = image.height, image.width
        n = self.num_tokens(height, width)
        if not tiles:   # the prompt's tokens only: no resizing
            rows, cols = self.grid(height, width)
            return ImagePlan(tiles=[], token_ids=[self.image_token_id] * n, num_slots=n,
                             grid={"rows": rows, "cols": cols}, size=(height, width))
        best = select_best_resolution(height, width, self.pinpoints)
        fitted = resize_uint8(image, *fit_size(height, width, best), self.resample)
        padded = _pad_centred(np.asarray(fitted), best)
        t = self.tile
        rows, cols = best[0] // t, best[1] // t
        crops = [np.asarray(resize_uint8(image, t, t, self.resample))]
        crops += [padded[r * t:(r + 1) * t, c * t:(c + 1) * t] for r in range(rows) for c in range(cols)]
        return ImagePlan(tiles=crops, token_ids=[self.image_token_id] * n, num_slots=n,
                         grid={"rows": rows, "cols": cols}, size=(height, width))

    def assemble(self, plan: ImagePlan, tile_features: np.ndarray) -> np.ndarray:
        rows, cols = plan.grid["rows"], plan.grid["cols"]
        n_tiles, tokens, channels = tile_features.shape
        if n_tiles != rows * cols + 1 or tokens != self.tokens_per_tile or channels != len(self.newline):
            raise BundleError(f"the image graph gave features {list(tile_features.shape)} for "
                              f"{rows}x{cols} tiles + a base image of {self.tokens_per_tile} tokens "
                              f"and {len(self.newline)} channels; the bundle is damaged. Re-run "
                              "`mmedge export`.")
        s = self.side
        grid = tile_features[1:].reshape(rows, cols, s, s, channels)
        fmap = grid.transpose(4, 0, 2, 1, 3).reshape(channels, rows * s, cols * s)
        height, width = plan.size
        h, w = unpadded_size(height, width, rows * s, cols * s)
        top, left = (rows * s - h) // 2, (cols * s - w) // 2
        fmap = fmap[:, top:top + h, left:left + w]
        out_h, out_w, shrunk = self.feature_shape(height, width)
        if shrunk:
            fmap = bilinear_resize(fmap, out_h, out_w)
        newline = np.broadcast_to(self.newline[:, None, None], (channels, out_h, 1))
        fmap = np.concatenate([fmap, newline.astype(fmap.dtype)], axis=2)
        features = np.concatenate([tile_features[0], fmap.reshape(channels, -1).T])
        if len(features) != plan.num_slots:
            raise BundleError(f"the assembled image has {len(features)} features for "
                              f"{plan.num_slots} image tokens; this is a bug in mmedge's anyres "
                              "layout, please report it with the image's size.")
        return np.ascontiguousarray(features, dtype=np.float32)

    def describe(self, plan: ImagePlan) -> str:
        rows, cols = plan.grid["rows"], plan.grid["cols"]
        return (f"{plan.size[1]}x{plan.size[0]} px -> a base image + {rows}x{cols} tiles, "
                f"{plan.num_slots} tokens")


def _load_newline(root, name: str, dim: int) -> np.ndarray:
    """The `image_newline` vector [dim] float32 from the bundle's safetensors file (the manifest
    lists it among its files, so `open_bundle` has checked its path and checksum)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        tensors = load_file(str(root / name))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{name} in {root} cannot be read ({exc}). Re-run `mmedge export`.") from None
    vector = tensors.get("image_newline")
    if vector is None or vector.shape != (dim,) or vector.dtype != np.float32 \
            or not np.all(np.isfinite(vector)):
        raise BundleError(f"{name} in {root} does not hold the image_newline vector (float32 "
                          f"[{dim}], finite). Re-run `mmedge export`.")
    return np.ascontiguousarray(vector)


def _pad_centred(pixels: np.ndarray, target: tuple[int, int]) -> np.ndarray:
    """Zero-pad HxWx3 to `target`, centred, the odd pixel after (transformers' _pad_for_patching)."""
    out = np.zeros((target[0], target[1], pixels.shape[2]), dtype=pixels.dtype)
    top, left = (target[0] - pixels.shape[0]) // 2, (target[1] - pixels.shape[1]) // 2
    out[top:top + pixels.shape[0], left:left + pixels.shape[1]] = pixels
    return out
