"""Grid geometry of the Qwen2-VL / Qwen2.5-VL / Qwen3-VL vision towers, in numpy, so the runtime can
compute without torch the small index and position tensors that transformers builds around the
vision graph (checked against transformers 5.24 by tests/vision/test_qwen_geometry.py):

- `smart_resize`: `qwen2_vl.image_processing_pil_qwen2_vl.smart_resize`, the target size of an
  image (both sides multiples of patch*merge, the pixel count kept within [min_pixels, max_pixels]).
- `merge_order` / `unmerge_order`: the patch order of `Qwen2VLImageProcessorPil.patchify` (each
  merge x merge block contiguous) from / to row-major patch order.
- `flat_pixel_values`: `Qwen2VLImageProcessorPil.patchify`, the processor's `pixel_values` rows.
- `vision_rotary`: `vision_utils.get_vision_position_ids` then `<Model>VisionRotaryEmbedding.forward`
  (the same in all three generations), the (cos, sin) of the tower's 2-D rotary.
- `window_index`: `vision_utils.get_vision_window_index` (Qwen2.5-VL's windowed attention), plus the
  window of every patch in the window-permuted order.
- `pos_embed_interpolation`: `vision_utils.get_vision_interpolation_indices_and_weights` as
  `Qwen3VLVisionModel.forward` calls it (bilinear, align_corners=True): Qwen3-VL's learned position
  table resampled to the image's grid, as 4 gather indices and weights per patch.
- `rope_positions` / `rope_delta`: `Qwen2VLModel.get_rope_index` (identical for images in
  Qwen2.5-VL and Qwen3-VL), the LLM's M-RoPE (t, h, w) position ids.

Grids are in patches (the processor's `image_grid_thw`, t == 1 for a still image). Integer results
equal transformers' exactly, and so do the interpolation weights (same float32 operations); the
rotary cos/sin are correctly rounded float32, within 1 ulp of torch's own float32 cos/sin.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

from mmedge.errors import ImageError

__all__ = ["smart_resize", "merge_order", "unmerge_order", "flat_pixel_values", "vision_rotary",
           "window_index", "window_permute", "pos_embed_interpolation", "rope_positions", "rope_delta"]

MAX_ASPECT_RATIO = 200  # transformers' smart_resize refuses images more elongated than this


def smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) the processor resizes an image to: the nearest multiples of `factor`
    (patch_size * merge_size: 28 for Qwen2/2.5-VL, 32 for Qwen3-VL), scaled down to fit max_pixels
    or up to reach min_pixels keeping the aspect ratio. Python floats and `round` (ties to even)
    exactly as transformers, so the grids agree on every size. Like transformers, a result may still
    exceed max_pixels for extreme aspect ratios (each side is at least `factor`)."""
    height, width, factor = operator.index(height), operator.index(width), operator.index(factor)
    min_pixels, max_pixels = operator.index(min_pixels), operator.index(max_pixels)
    if height < 1 or width < 1:
        raise ImageError(f"the image is {width}x{height} pixels; both sides must be at least 1 pixel")
    if factor < 1:
        raise ValueError(f"factor must be positive, got {factor}")
    if max_pixels < factor * factor:
        raise ImageError(f"max_pixels={max_pixels} is smaller than one merged patch ({factor}x{factor} pixels); "
                         f"the smallest allowed value is {factor * factor}")
    if min_pixels > max_pixels:
        raise ImageError(f"min_pixels={min_pixels} is larger than max_pixels={max_pixels}; "
                         "min_pixels must not exceed max_pixels")
    ratio = max(height, width) / min(height, width)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageError(f"the image is {width}x{height} pixels, an aspect ratio of {ratio:.1f}; "
                         f"Qwen-VL models take at most {MAX_ASPECT_RATIO}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    if h_bar < factor or w_bar < factor:  # only with min_pixels < 1; transformers would fail later
        raise ImageError(f"the {width}x{height} image resizes to {w_bar}x{h_bar} pixels with min_pixels="
                         f"{min_pixels}; set min_pixels to at least 1")
    return h_bar, w_bar


def _check_grid(grid_h: int, grid_w: int, merge: int) -> None:
    if grid_h < 1 or grid_w < 1 or merge < 1 or grid_h % merge or grid_w % merge:
        raise ValueError(f"a {grid_h}x{grid_w} patch grid is not a positive multiple of merge={merge}")


def merge_order(tokens: np.ndarray, grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """Row-major patch rows [grid_h*grid_w, ...] (what a stride-patch conv over the resized image
    gives, flattened row by row) -> the processor's order, (h/m, w/m, m, m): every merge x merge
    block contiguous, as the patch merger concatenates them."""
    _check_grid(grid_h, grid_w, merge)
    t = np.asarray(tokens)
    rest = t.shape[1:]
    t = t.reshape(grid_h // merge, merge, grid_w // merge, merge, *rest).swapaxes(1, 2)
    return t.reshape(grid_h * grid_w, *rest)


def unmerge_order(tokens: np.ndarray, grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """The inverse of `merge_order`: processor-order rows -> row-major patch order."""
    _check_grid(grid_h, grid_w, merge)
    t = np.asarray(tokens)
    rest = t.shape[1:]
    t = t.reshape(grid_h // merge, grid_w // merge, merge, merge, *rest).swapaxes(1, 2)
    return t.reshape(grid_h * grid_w, *rest)


def flat_pixel_values(pixels: np.ndarray, patch: int, temporal: int, merge: int) -> np.ndarray:
    """One resized, rescaled and normalized image, float32 [3, H, W] -> its rows of the processor's
    `pixel_values`, float32 [grid_h*grid_w, 3*temporal*patch*patch] (grid_t == 1): patches in
    `merge_order`, each flattened as (channel, temporal, row, column) with the still frame repeated
    `temporal` times, which is what the tower's Conv3d patch embedding reads."""
    img = np.asarray(pixels, dtype=np.float32)
    if img.ndim != 3 or img.shape[1] % (patch * merge) or img.shape[2] % (patch * merge):
        raise ValueError(f"pixels of shape {img.shape} are not [C, H, W] with H and W multiples of {patch * merge}")
    c, h, w = img.shape
    gh, gw = h // patch, w // patch
    p = img.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch).transpose(1, 4, 2, 5, 0, 3, 6)
    p = np.broadcast_to(p[:, :, :, :, :, None], (*p.shape[:5], temporal, patch, patch))
    return np.ascontiguousarray(p).reshape(gh * gw, c * temporal * patch * patch)


def _block_coords(grid_h: int, grid_w: int, merge: int) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of every patch, in merge order (`vision_utils.get_vision_position_ids`)."""
    rows, cols = np.meshgrid(np.arange(grid_h, dtype=np.int64), np.arange(grid_w, dtype=np.int64), indexing="ij")
    return merge_order(rows.reshape(-1), grid_h, grid_w, merge), merge_order(cols.reshape(-1), grid_h, grid_w, merge)


def patch_positions(grid_h: int, grid_w: int, merge: int) -> np.ndarray:
    """Each patch's (row, column), int64 [grid_h*grid_w, 2], in merge order: what the vision
    graph turns into its rotary tables (`get_vision_position_ids` for one image)."""
    return np.stack(_block_coords(grid_h, grid_w, merge), axis=-1)


def vision_rotary(grid_h: int, grid_w: int, merge: int, head_dim: int,
                  theta: float = 10000.0) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) float32 [grid_h*grid_w, head_dim] of the vision attention's 2-D rotary for one
    image, in the processor's patch order. The first quarter of the head rotates by the patch's row,
    the second by its column, and the second half repeats the first (rotate_half pairs i, i+D/2);
    inv_freq = 1/theta^(2i/(D/2)). Qwen2-VL (head_dim = embed_dim/num_heads), Qwen2.5-VL and Qwen3-VL
    (head_dim = hidden_size/num_heads) compute it alike; Qwen2.5-VL then permutes the rows with
    `window_permute`. The angles are the same float32 products as torch's; cos/sin are evaluated in
    float64 and rounded, which agrees with torch's vectorized float32 cos/sin to 1 ulp."""
    if head_dim < 4 or head_dim % 4:
        raise ValueError(f"the 2-D rotary needs head_dim divisible by 4, got {head_dim}")
    spatial = head_dim // 2
    exponent = np.arange(0, spatial, 2, dtype=np.float32) / np.float32(spatial)
    # torch's float32 pow(theta, exponent) is the correctly rounded value: pow in float64, then round
    inv_freq = np.float32(1.0) / (np.float64(np.float32(theta)) ** exponent.astype(np.float64)).astype(np.float32)
    rows, cols = _block_coords(grid_h, grid_w, merge)
    angles = np.concatenate([rows.astype(np.float32)[:, None] * inv_freq,
                             cols.astype(np.float32)[:, None] * inv_freq], axis=-1)
    angles = np.concatenate([angles, angles], axis=-1).astype(np.float64)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def window_index(grid_h: int, grid_w: int, merge: int, window_size: int,
                 patch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen2.5-VL's windowed attention for one image: (window_index int64 [grid_h*grid_w/merge^2],
    window_ids int64 [grid_h*grid_w]).

    window_index is `get_vision_window_index`'s: the merge units (merge x merge blocks, numbered in
    row-major order of the merged grid) listed window by window, each window `window_size` pixels
    square (window_size/patch_size/merge units a side; the last row and column of windows may be
    partial). The tower gathers its patch rows by it at merge-unit granularity (`window_permute`)
    before the blocks and undoes it after the merger. window_ids gives, for every patch row of that
    permuted sequence, the window it attends within in the non-full-attention blocks: consecutive
    ids over the non-empty windows, i.e. the segments of `cu_window_seqlens` after
    `unique_consecutive` (transformers pads a whole empty window when a side divides evenly; the
    empty segments vanish there and here)."""
    _check_grid(grid_h, grid_w, merge)
    side = window_size // merge // patch_size
    if side < 1:
        raise ValueError(f"window_size={window_size} is smaller than one merged patch ({merge * patch_size} px)")
    llm_h, llm_w = grid_h // merge, grid_w // merge
    pad_h, pad_w = side - llm_h % side, side - llm_w % side  # as transformers: a full window if divisible
    padded = np.full((llm_h + pad_h, llm_w + pad_w), -100, dtype=np.int64)
    padded[:llm_h, :llm_w] = np.arange(llm_h * llm_w, dtype=np.int64).reshape(llm_h, llm_w)
    nwh, nww = padded.shape[0] // side, padded.shape[1] // side
    windows = padded.reshape(nwh, side, nww, side).swapaxes(1, 2).reshape(nwh * nww, side * side)
    valid = windows != -100
    counts = valid.sum(axis=1)
    counts = counts[counts > 0]
    ids = np.repeat(np.arange(len(counts), dtype=np.int64), counts * merge * merge)
    return windows[valid], ids


def window_permute(rows: np.ndarray, window_index: np.ndarray, merge: int) -> np.ndarray:
    """Rows in the processor's patch order -> Qwen2.5-VL's window order: whole merge units gathered
    by `window_index` (`permute_input_for_window_attn`), e.g. for the rotary cos/sin."""
    r = np.asarray(rows)
    unit = merge * merge
    return r.reshape(r.shape[0] // unit, unit, *r.shape[1:])[window_index].reshape(r.shape)


def _bilinear_axis(coord: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The 2 taps and weights along one axis: `_interpolation_axis_taps_weights` with
    mode="bilinear", align_corners=True, in the same float32 operations."""
    src = coord.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    offsets = np.arange(2, dtype=np.int64)
    taps = np.clip(floor.astype(np.int64)[:, None] + offsets, 0, side - 1)
    distance = np.abs(src[:, None] - floor[:, None] - offsets.astype(np.float32))
    return taps, np.maximum(np.float32(1) - distance, np.float32(0))


def pos_embed_interpolation(grid_h: int, grid_w: int, merge: int,
                            num_grid_per_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Qwen3-VL's learned position embedding for one image: (index int64 [4, grid_h*grid_w], weight
    float32 [4, grid_h*grid_w]) in the processor's patch order, such that
    `sum_k weight[k][:, None] * table[index[k]]` is what the tower adds to the patch embeddings
    (table = pos_embed.weight, a num_grid_per_side^2 square grid, bilinearly resampled with
    align_corners=True to the image's grid). Taps are ordered (top-left, top-right, bottom-left,
    bottom-right) as transformers'; weights are bit-equal to its float32 ones."""
    _check_grid(grid_h, grid_w, merge)
    rows, cols = _block_coords(grid_h, grid_w, merge)
    h_taps, h_weights = _bilinear_axis(rows, grid_h, num_grid_per_side)
    w_taps, w_weights = _bilinear_axis(cols, grid_w, num_grid_per_side)
    index = (h_taps[:, :, None] * num_grid_per_side + w_taps[:, None, :]).reshape(-1, 4)
    weight = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
    return np.ascontiguousarray(index.T), np.ascontiguousarray(weight.T)


def rope_positions(ids: Sequence[int], image_grids: Sequence[tuple[int, int, int]], image_token_id: int,
                   merge: int) -> np.ndarray:
    """M-RoPE position ids int64 [3, len(ids)] of one sequence, as `get_rope_index`: text tokens
    count up by one in all three rows; each run of `image_token_id` tokens (one image, t*h*w/merge^2
    tokens for its grid (t, h, w) in patches, images in order) takes (start + t, start + row,
    start + column) over its merged grid, and the text after it resumes at start + max(h, w)/merge.
    Like transformers, adjacent runs (no token between two images) would count as one image; a
    run whose length does not match its grid raises ValueError."""
    tokens = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(tokens)
    is_image = tokens == image_token_id
    edges = [0, *(np.flatnonzero(is_image[1:] != is_image[:-1]) + 1).tolist(), n] if n else [0]
    grids = iter(image_grids)
    parts, pos = [], 0
    for start, end in zip(edges[:-1], edges[1:]):
        if not is_image[start]:
            parts.append(np.broadcast_to(np.arange(pos, pos + end - start, dtype=np.int64), (3, end - start)))
            pos += end - start
            continue
        grid = next(grids, None)
        if grid is None:
            raise ValueError(f"image tokens at {start}..{end - 1} have no image grid left")
        t, h, w = (operator.index(v) for v in grid)
        gt, gh, gw = t, h // merge, w // merge
        if end - start != gt * gh * gw:
            raise ValueError(f"an image of grid {(t, h, w)} takes {gt * gh * gw} tokens, the run at {start} has "
                             f"{end - start}")
        tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
        parts.append(np.stack([tt, hh, ww]).reshape(3, -1).astype(np.int64) + pos)
        pos += max(h, w) // merge
    if next(grids, None) is not None:
        raise ValueError(f"{len(image_grids)} image grids for {sum(map(int, is_image[edges[:-1]]))} image token runs")
    return np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)


def rope_delta(positions: np.ndarray, length: int) -> int:
    """`get_rope_index`'s mrope_position_delta: positions.max() + 1 - length, the offset that the
    positions of the tokens generated after the prompt (length tokens) get: length + i + delta."""
    return int(np.max(positions)) + 1 - int(length) if np.size(positions) else 0
