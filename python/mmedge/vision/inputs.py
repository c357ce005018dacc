"""Images -> the input of a bundle's image graph.

Bundles written by `mmedge export` store the vision tower's patch embedding beside the graph
(manifest image["patch_embedding"], weights in safetensors; see mmedge.export.patch_embedding), and
their image graph starts after it, at `patch_tokens` float32 [n, tokens, D]. `VisionInput` computes
those tokens from each frame with the native kernel (`mmedge.kernels.patch_embed`: resize, crop,
normalize, patchify and project in one pass over the uint8 pixels) or, where the extension is not
built or the family resizes with a filter the kernel lacks, with `ImagePreprocessor` and numpy (same
result to float32 rounding). A graph that takes `pixel_values` (the whole tower, as a hand-made
bundle may have it) gets the preprocessed pixels.

`path` says which of "kernel", "numpy" or "pixels" runs. Nothing here imports torch or
`mmedge.export`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmedge import kernels
from mmedge.errors import BundleError, ImageError
from mmedge.vision.image import ImageLike, load_image
from mmedge.vision.preprocess import ImagePreprocessor

TOKENS_INPUT = "patch_tokens"
PIXELS_INPUT = "pixel_values"

__all__ = ["VisionInput", "patch_embed_numpy"]


def patch_embed_numpy(pixels: np.ndarray, weights: Mapping[str, np.ndarray]) -> np.ndarray:
    """pixel_values float32 [n, 3, H, W] -> patch tokens float32 [n, tokens, D]: the stride-P conv
    (+ bias), the class token first where there is one, plus the position embeddings."""
    weight = weights["weight"]
    dim, _, p, _ = weight.shape
    n, _, h, w = pixels.shape
    gh, gw = h // p, w // p
    patches = pixels[:, :, :gh * p, :gw * p].reshape(n, 3, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5)
    tokens = patches.reshape(n, gh * gw, 3 * p * p) @ weight.reshape(dim, -1).T
    if weights.get("bias") is not None:
        tokens += weights["bias"]
    if weights.get("class_embedding") is not None:
        cls = np.broadcast_to(weights["class_embedding"], (n, 1, dim))
        tokens = np.concatenate([cls, tokens], axis=1)
    return np.ascontiguousarray(tokens + weights["position_embedding"], dtype=np.float32)


def _load_weights(root: Path, entry: Mapping[str, Any], files: Mapping[str, Any]) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    # num_tokens None: the token count varies per image (Qwen-VL) and there are no positions
    name, tokens = entry.get("file"), entry.get("num_tokens")
    if tokens is not None and (not isinstance(tokens, int) or isinstance(tokens, bool)):
        raise BundleError(f"the manifest's patch_embedding has num_tokens {tokens!r:.40}, not a "
                          "token count. The bundle is damaged; re-run `mmedge export`.")
    if not isinstance(name, str) or name not in files:
        raise BundleError(f"the manifest's patch_embedding names {name!r}, which it does not list "
                          "among its files. The bundle is damaged; re-run `mmedge export`.")
    try:
        weights = load_file(str(root / name))
    except (SafetensorError, OSError) as exc:
        raise BundleError(f"{name} in {root} cannot be read ({exc}). Re-run `mmedge export`.") from None
    problems = []
    if weights.get("weight") is None or weights["weight"].ndim != 4 or weights["weight"].shape[1] != 3:
        problems.append("'weight' must be [D, 3, P, P]")
    else:
        dim, _, p, q = weights["weight"].shape
        expect = {"position_embedding": (tokens, dim), "bias": (dim,), "class_embedding": (dim,)}
        problems += [f"'{k}' is {weights[k].shape}, expected {v}" for k, v in expect.items()
                     if k in weights and weights[k].shape != v]
        if ("position_embedding" not in weights and tokens is not None) or p != q \
                or p != entry.get("patch_size"):
            problems.append("position embeddings or a square patch size are missing")
    if any(w.dtype != np.float32 for w in weights.values()):
        problems.append("every tensor must be float32")
    if problems:
        raise BundleError(f"{name} in {root} does not hold a patch embedding: " + "; ".join(problems)
                          + ". Re-run `mmedge export`.")
    return {k: np.ascontiguousarray(v) for k, v in weights.items()}


class VisionInput:
    """Images -> {input name: array} for a bundle's image graph (see the module doc)."""

    def __init__(self, root: Path, manifest: Mapping[str, Any], input_name: str, *,
                 threads: int | None = None, prefer_kernel: bool = True,
                 spec: Mapping[str, Any] | None = None):
        # `spec`: what each image is preprocessed with, when it is not the manifest's own "image"
        # entry (a tiling layout's per-tile spec; see mmedge.vision.layouts).
        spec = manifest["image"] if spec is None else spec
        self.spec = spec
        self.preprocessor = ImagePreprocessor(spec)
        self.input_name = input_name
        self.threads = threads or 0
        entry = spec.get("patch_embedding")
        if input_name == PIXELS_INPUT:
            self.path, self.weights = "pixels", None
            return
        if input_name != TOKENS_INPUT or not isinstance(entry, Mapping):
            raise BundleError(f"the bundle's image graph takes {input_name!r} but the manifest "
                              f"{'has no patch_embedding entry' if entry is None else 'names no tokens input'}"
                              "; the bundle is damaged or from another tool. Re-run `mmedge export`.")
        self.weights = _load_weights(root, entry, manifest["files"])
        self.dim = self.weights["weight"].shape[0]
        self.num_tokens = entry["num_tokens"]   # None: it varies with the image (embed_resized)
        bicubic = not self.preprocessor.do_resize or self.preprocessor.resample == Image.Resampling.BICUBIC
        self.path = "kernel" if prefer_kernel and bicubic and kernels.available() else "numpy"

    def __call__(self, images: Sequence[ImageLike] | ImageLike) -> dict[str, np.ndarray]:
        if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise ImageError("no images were given; pass at least one image.")
        if self.path == "pixels":
            return {PIXELS_INPUT: self.preprocessor(images)}
        if self.num_tokens is None:
            raise BundleError("this bundle's images take a number of patch tokens that depends on "
                              "their size; use embed_resized (its image layout does).")
        if self.path == "numpy":
            return {TOKENS_INPUT: patch_embed_numpy(self.preprocessor(images), self.weights)}
        out = np.empty((len(images), self.num_tokens, self.dim), dtype=np.float32)
        for i, image in enumerate(images):
            frame = np.asarray(load_image(image, max_pixels=self.preprocessor.max_pixels))
            kernels.patch_embed(frame, self.preprocessor, self.weights, out=out[i], num_threads=self.threads)
        return {TOKENS_INPUT: out}

    def embed_resized(self, image: ImageLike, height: int, width: int) -> np.ndarray:
        """One image resized to exactly `height` x `width` (the family's filter, on the uint8
        image) -> its patch tokens float32 [(height/P) * (width/P), D], row-major, without
        position embeddings: for layouts that size each image themselves (Qwen-VL)."""
        spec = {**self.spec, "do_resize": True, "size": {"height": height, "width": width},
                "image_size": [height, width], "do_center_crop": False, "crop_size": None}
        preprocessor = ImagePreprocessor(spec, max_pixels=self.preprocessor.max_pixels)
        weights = {k: v for k, v in self.weights.items() if k != "position_embedding"}
        if self.path == "kernel":
            frame = np.asarray(load_image(image, max_pixels=preprocessor.max_pixels))
            return kernels.patch_embed(frame, preprocessor, weights, num_threads=self.threads)
        pixels = preprocessor([image])
        p = weights["weight"].shape[-1]
        weights["position_embedding"] = np.zeros(((height // p) * (width // p), self.dim), np.float32)
        return patch_embed_numpy(pixels, weights)[0]
