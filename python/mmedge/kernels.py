"""Native CPU kernels: fused image preprocessing + patch embedding, and fused attention.

Both run in `mmedge._C` (csrc/patch_embed.cpp, csrc/attention.cpp), use OpenMP threads and the
CPU's AVX-512/AVX2 where present, release the GIL, and never copy their numpy inputs.

- `patch_embed(frame, spec, weights)`: a uint8 H x W x 3 camera frame -> the vision tower's input
  tokens float32 [tokens, D], i.e. what `ImagePreprocessor` (PIL bicubic resize, center crop,
  rescale, normalize) followed by the patch-embedding conv, class token and position embeddings
  compute, in one pass. The resized pixels equal PIL's exactly.
- `attention(q, k, v, ...)`: softmax(q k^T * scale + mask) v over [batch, heads, tokens, head_dim]
  arrays, causal or not, with fewer kv heads than query heads (GQA) and against the first `kv_len`
  rows of a preallocated KV cache; `out` and `scratch` may be passed in so a decode step allocates
  nothing.

`patch_embed` is the runtime's image path (mmedge.vision.inputs: every bundle's image graph starts
after the patch embedding); `attention` is not wired into a decoder yet. Nothing here imports torch
or `mmedge.export`. Without `_C` (a source tree that was not built) `available()` is False and the
kernels raise RuntimeError saying how to build it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import PIL
from PIL import Image

from mmedge.errors import ImageError
from mmedge.native import _C, _UNAVAILABLE_REASON
from mmedge.vision.preprocess import ImagePreprocessor

# Pillow 13 changed the order of its two resampling passes in some cases (see csrc/patch_embed.cpp);
# match the Pillow that ImagePreprocessor uses here.
_PILLOW13_PASS_ORDER = int(PIL.__version__.split(".")[0]) >= 13

__all__ = ["available", "patch_embed", "patch_embed_geometry", "attention", "attention_scratch_size"]


def available() -> bool:
    """True when the native extension is built (else the functions here raise RuntimeError)."""
    return _C is not None


def _native():
    if _C is None:
        raise RuntimeError(_UNAVAILABLE_REASON)
    return _C


def patch_embed_geometry(frame_hw: tuple[int, int], spec: Mapping[str, Any] | ImagePreprocessor
                         ) -> tuple[tuple[int, int], tuple[int, int]]:
    """((resize_h, resize_w), (image_h, image_w)) for a frame of `frame_hw` under `spec`, by the same
    rules as `ImagePreprocessor` (transformers'): the family's resize, then the center crop."""
    pre = spec if isinstance(spec, ImagePreprocessor) else ImagePreprocessor(spec)
    height, width = frame_hw
    resized = pre.resized_size(height, width)   # ImageError where that would be enormous
    image = pre.crop_size if pre.do_center_crop else resized
    if pre.image_size is not None and tuple(image) != tuple(pre.image_size):
        raise ImageError(
            f"the image is {image[0]}x{image[1]} after preprocessing but the model takes "
            f"{pre.image_size[0]}x{pre.image_size[1]}; resize it to that size first.")
    return tuple(resized), tuple(image)


def patch_embed(frame: np.ndarray, spec: Mapping[str, Any] | ImagePreprocessor,
                weights: Mapping[str, np.ndarray | None], *, out: np.ndarray | None = None,
                num_threads: int = 0) -> np.ndarray:
    """A camera frame to the vision tower's input tokens, float32 [tokens, D].

    frame    uint8 [H, W, 3] RGB, any size; rows may be strided (a crop of a larger buffer) but
             pixels must be packed (strides (row, 3, 1)).
    spec     the manifest's "image" dict (see `mmedge.vision.preprocess`), or an `ImagePreprocessor`;
             its resample must be BICUBIC (3), the only filter implemented natively.
    weights  "weight": the patch conv [D, 3, P, P] float32 (C-contiguous); optional "bias" [D]
             (SigLIP), "class_embedding" [D] (CLIP: token 0 becomes class_embedding + pos[0]) and
             "position_embedding" [tokens, D] added to every token.
    out      optional float32 [tokens, D] to write into.

    Equals running `ImagePreprocessor` then the conv (stride P), flattening the patches row-major
    and adding class token and positions, to float32 rounding of the projection.
    """
    pre = spec if isinstance(spec, ImagePreprocessor) else ImagePreprocessor(spec)
    if pre.do_resize and pre.resample != Image.Resampling.BICUBIC:
        raise ValueError(f"patch_embed implements BICUBIC resizing only; this spec asks for "
                         f"{pre.resample.name}. Use ImagePreprocessor for it.")
    shape = getattr(frame, "shape", None)
    if shape is None or len(shape) != 3:
        raise ValueError(f"argument 'frame' must be a uint8 [H, W, 3] array, got shape {shape}")
    (rh, rw), (ih, iw) = patch_embed_geometry((shape[0], shape[1]), pre)
    return _native().patch_embed(
        frame, rh, rw, ih, iw, pre.do_rescale, pre.rescale_factor, pre.do_normalize,
        [float(x) for x in pre.mean], [float(x) for x in pre.std], weights["weight"],
        bias=weights.get("bias"), class_embedding=weights.get("class_embedding"),
        position_embedding=weights.get("position_embedding"), out=out, num_threads=num_threads,
        pillow13_pass_order=_PILLOW13_PASS_ORDER)


def attention_scratch_size(batch: int, num_heads: int, num_kv_heads: int, q_len: int,
                           head_dim: int, num_threads: int = 0) -> int:
    """Float32 elements of `scratch` that `attention` needs for these shapes (any kv_len)."""
    return _native().attention_scratch_size(batch, num_heads, num_kv_heads, q_len, head_dim,
                                            num_threads)


def attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, *, mask: np.ndarray | None = None,
              causal: bool = False, scale: float | None = None, kv_len: int | None = None,
              out: np.ndarray | None = None, scratch: np.ndarray | None = None,
              num_threads: int = 0) -> np.ndarray:
    """softmax(q k^T * scale + mask) v, float32, without materializing the score matrix.

    q        [batch, heads, q_len, head_dim]
    k, v     [batch, kv_heads, capacity, head_dim]; kv_heads divides heads (query head h reads kv
             head h // (heads // kv_heads)). Only rows [0, kv_len) are read: a KV cache whose new
             rows the caller has already written. Any strides with a contiguous last axis (so a
             [batch, tokens, heads, dim] buffer works through .transpose(0, 2, 1, 3)).
    mask     optional additive float32 [q_len, >= kv_len] or [batch|1, heads|1, q_len, >= kv_len]
             (-inf hides a key).
    causal   query t sits at position kv_len - q_len + t and sees keys up to there (the usual
             lower triangle when q_len == kv_len; decode when q_len == 1 sees everything).
    scale    default 1 / sqrt(head_dim).
    kv_len   default k's capacity.
    out      optional float32 like q to write into; scratch: optional float32 of at least
             `attention_scratch_size(...)` elements. With both given nothing is allocated.

    A query whose keys are all masked gets zeros. Returns `out`.
    """
    if out is None:
        out = np.empty(np.shape(q), dtype=np.float32)
    return _native().attention(q, k, v, out, scratch=scratch, mask=mask,
                               kv_len=-1 if kv_len is None else int(kv_len), scale=scale,
                               causal=causal, num_threads=num_threads)
