"""The "idefics3" image layout (SmolVLM, SmolVLM2, Idefics3), exactly as transformers'
Idefics3ImageProcessor / SmolVLMImageProcessor (their Pillow path) and Idefics3Processor /
SmolVLMProcessor lay an image out:

1. resize (Pillow, the config's filter, LANCZOS for SmolVLM) so the longest edge is
   size["longest_edge"] (up or down), the other edge int(edge / aspect) rounded up to even, then
   capped at 4096 px;
2. with do_image_splitting: resize again so both edges are multiples of the tile side
   (max_image_size["longest_edge"]); an image larger than one tile is cut into rows x cols tiles,
   row-major, followed by the whole (split-size) image resized to one tile, the global view;
   without splitting, or when the image is one tile: the image resized to one tile;
3. each tile is rescaled and normalized (the patch-embedding kernel does that and the patch
   embedding in one pass).

Prompt: each image placeholder becomes, for a split image,
    for each row: for each col: <fake_token_around_image><row_r_col_c><image>*T   then "\\n"
    "\\n<fake_token_around_image><global-img><image>*T<fake_token_around_image>"
and for a single tile `<fake_token_around_image><global-img><image>*T<fake_token_around_image>`,
T = tokens_per_tile (tile patches / scale_factor^2). The replacement text is tokenized on its own:
it starts and ends with special tokens, so that gives the ids transformers gets from tokenizing
the whole prompt (checked against the processor in tests/vision/test_idefics3_layout.py).
Every tile is a full tile, so no pixel attention mask is needed (transformers' is all ones).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from mmedge.errors import BundleError
from mmedge.vision.layouts import ImageLayout, ImagePlan, resize_uint8, tile_preprocessing

MAX_IMAGE_SIZE = 4096  # transformers' cap on the resized image's longest edge


def rescale_to_max_len(height: int, width: int, max_len: int) -> tuple[int, int]:
    """transformers' `_resize_output_size_rescale_to_max_len` (min_len 1)."""
    aspect_ratio = width / height
    if width >= height:
        width = max_len
        height = int(width / aspect_ratio)
        if height % 2 != 0:
            height += 1
    else:
        height = max_len
        width = int(height * aspect_ratio)
        if width % 2 != 0:
            width += 1
    return max(height, 1), max(width, 1)


def scale_below_upper_bound(height: int, width: int, max_len: int = MAX_IMAGE_SIZE) -> tuple[int, int]:
    """transformers' `_resize_output_size_scale_below_upper_bound`."""
    aspect_ratio = width / height
    if width >= height and width > max_len:
        width = max_len
        height = int(width / aspect_ratio)
    elif height > width and height > max_len:
        height = max_len
        width = int(height * aspect_ratio)
    return max(height, 1), max(width, 1)


def multiple_of_tile(height: int, width: int, tile: int) -> tuple[int, int]:
    """transformers' `resize_for_vision_encoder` size: both edges rounded up to multiples of `tile`."""
    aspect_ratio = width / height
    if width >= height:
        width = math.ceil(width / tile) * tile
        height = int(width / aspect_ratio)
        height = math.ceil(height / tile) * tile
    else:
        height = math.ceil(height / tile) * tile
        width = int(height * aspect_ratio)
        width = math.ceil(width / tile) * tile
    return height, width


class Idefics3Layout(ImageLayout):
    name = "idefics3"

    def __init__(self, spec: Mapping[str, Any], tokenizer: Any, root):
        super().__init__(spec, tokenizer, root)
        try:
            self.do_resize = bool(spec["do_resize"])
            self.longest_edge = int(spec["size"]["longest_edge"])
            self.do_image_splitting = bool(spec["do_image_splitting"])
            self.tile = int(spec["max_image_size"]["longest_edge"])
            self.resample = Image.Resampling(int(spec["resample"]))
            self.tokens_per_tile = int(spec["tokens_per_tile"])
            self.fake_token = str(spec["fake_image_token"])
            self.global_token = str(spec["global_image_token"])
            self.image_token = str(spec["image_token"])
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"the manifest's idefics3 image entry is malformed ({type(exc).__name__}: "
                              f"{exc}); re-export the bundle.") from None
        if not (0 < self.tile <= MAX_IMAGE_SIZE and 0 < self.longest_edge <= MAX_IMAGE_SIZE
                and 0 < self.tokens_per_tile <= 1 << 16):
            raise BundleError("the manifest's idefics3 image entry has an out-of-range tile size, "
                              "longest edge or token count; re-export the bundle.")
        if list(spec.get("image_size", ())) != [self.tile, self.tile]:
            raise BundleError(f"the manifest's image_size {spec.get('image_size')} is not the tile "
                              f"size {self.tile}; re-export the bundle.")
        self._tile_spec = tile_preprocessing(spec, self.tile)
        self._expansions: dict[tuple[int, int], list[int]] = {}

    @property
    def tile_spec(self) -> Mapping[str, Any]:
        return self._tile_spec

    def grid(self, height: int, width: int) -> tuple[int, int]:
        """(rows, cols) of the tile grid for an image of height x width; (0, 0): one tile."""
        if self.do_resize:
            height, width = scale_below_upper_bound(*rescale_to_max_len(height, width, self.longest_edge))
        if not self.do_image_splitting:
            return 0, 0
        height, width = multiple_of_tile(height, width, self.tile)
        if height > self.tile or width > self.tile:
            return height // self.tile, width // self.tile
        return 0, 0

    def plan(self, image: Image.Image, *, tiles: bool = True) -> ImagePlan:
        size = (image.height, image.width)
        if not tiles:
            rows, cols = self.grid(*size)
            return ImagePlan(tiles=[], token_ids=self.expansion(rows, cols),
                             num_slots=(rows * cols + 1) * self.tokens_per_tile,
                             grid={"rows": rows, "cols": cols}, size=size)
        if self.do_resize:
            h, w = scale_below_upper_bound(*rescale_to_max_len(image.height, image.width,
                                                               self.longest_edge))
            image = resize_uint8(image, h, w, self.resample)
        crops: list[np.ndarray] = []
        rows = cols = 0
        if self.do_image_splitting:
            image = resize_uint8(image, *multiple_of_tile(image.height, image.width, self.tile),
                            self.resample)
            if image.height > self.tile or image.width > self.tile:
                rows, cols = image.height // self.tile, image.width // self.tile
                pixels = np.asarray(image)
                t = self.tile
                crops = [pixels[r * t:(r + 1) * t, c * t:(c + 1) * t]
                         for r in range(rows) for c in range(cols)]
        crops.append(np.asarray(resize_uint8(image, self.tile, self.tile, self.resample)))
        ids = self.expansion(rows, cols)
        return ImagePlan(tiles=crops, token_ids=ids, num_slots=len(crops) * self.tokens_per_tile,
                         grid={"rows": rows, "cols": cols}, size=size)

    def expansion(self, rows: int, cols: int) -> list[int]:
        """The token ids an image of rows x cols tiles puts in the prompt (see the module doc)."""
        key = (rows, cols)
        if key not in self._expansions:
            image = self.image_token * self.tokens_per_tile
            glob = f"{self.fake_token}{self.global_token}{image}{self.fake_token}"
            if rows == 0 and cols == 0:
                text = glob
            else:
                text = "".join("".join(f"{self.fake_token}<row_{r + 1}_col_{c + 1}>{image}"
                                       for c in range(cols)) + "\n" for r in range(rows))
                text += "\n" + glob
            self._expansions[key] = self.tokenizer.encode(text)
        ids = self._expansions[key]
        expected = (rows * cols + 1) * self.tokens_per_tile
        if sum(1 for i in ids if i == self.image_token_id) != expected:
            raise BundleError(f"the bundle's tokenizer does not encode {self.image_token!r} as the "
                              f"image token {self.image_token_id}; re-export the bundle.")
        return ids

    def describe(self, plan: ImagePlan) -> str:
        rows, cols = plan.grid["rows"], plan.grid["cols"]
        layout = f"{rows}x{cols} tiles + a global view" if rows else "one tile"
        return f"{plan.size[1]}x{plan.size[0]} px -> {layout}, {len(plan.token_ids)} tokens"
