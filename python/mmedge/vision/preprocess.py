"""Image preprocessing: images in, the vision graph's `pixel_values` out, exactly as transformers
prepares them.

`ImagePreprocessor` reproduces transformers' CLIPImageProcessor and SiglipImageProcessor (the
Pillow/numpy path they run without torchvision) step for step: RGB conversion, Pillow resize on
uint8 pixels, center crop (zero padding where the image is smaller than the crop), rescale in
float64 cast to float32, normalize in float32. Results equal transformers' to float32 rounding.
Reading and decoding images lives in `mmedge.vision.image`; this module never touches files.

The manifest's "image" dict it is built from (written by the exporter, see
`mmedge.export.preprocessing.image_spec_from_hf`):
    processor        "clip" | "siglip": whose semantics these parameters follow
    do_convert_rgb   always true in practice; images are always made RGB (the graph takes 3 channels)
    do_resize, size  {"shortest_edge": S} (keep aspect ratio) or {"height": H, "width": W}
    resample         a PIL.Image.Resampling value (3 = BICUBIC)
    do_center_crop, crop_size   {"height": H, "width": W} or null
    do_rescale, rescale_factor  pixel values times this factor (1/255)
    do_normalize, image_mean, image_std   per-channel (x - mean) / std
    image_size       [H, W] the vision graph takes; preprocessing must produce exactly this
    patch_size, image_token, image_token_id, num_image_tokens   read by other modules
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmedge.errors import BundleError, ImageError
from mmedge.vision.image import DEFAULT_MAX_PIXELS, ImageLike, load_image

__all__ = ["ImagePreprocessor", "resize_output_size", "center_crop", "MAX_SPEC_SIDE"]

_MAX_INT32 = 2**31 - 1

PROCESSORS = ("clip", "siglip")
# The largest side a manifest may ask an image to be resized or cropped to. Vision towers take a few
# hundred pixels; a manifest asking for more is damaged or hostile (a 10^6-pixel crop side would
# allocate terabytes).
MAX_SPEC_SIDE = 8192


def resize_output_size(height: int, width: int, size: Mapping[str, int]) -> tuple[int, int]:
    """(height, width) after resizing, by transformers' `get_resize_output_image_size` rule.

    With {"shortest_edge": S} the short side becomes S and the long side int(S * long / short),
    truncated, not rounded; a square image becomes S x S.
    """
    if "shortest_edge" in size:
        target = size["shortest_edge"]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = target, int(target * long / short)
        return (new_long, new_short) if width <= height else (new_short, new_long)
    return size["height"], size["width"]


def center_crop(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Crop an HxWxC array to `height` x `width` around its center, as transformers does.

    The crop starts at (H - height) // 2; along an axis where the image is smaller than the crop it
    is zero-padded instead, placed at offset ceil((height - H) / 2).
    """
    out_shape = (height, width) + pixels.shape[2:]
    spans = []
    for have, want in zip(pixels.shape[:2], (height, width)):
        if have >= want:
            start = (have - want) // 2
            spans.append((slice(start, start + want), slice(0, want)))
        else:
            offset = (want - have + 1) // 2
            spans.append((slice(0, have), slice(offset, offset + have)))
    (src_rows, dst_rows), (src_cols, dst_cols) = spans
    if dst_rows == slice(0, height) and dst_cols == slice(0, width):
        return pixels[src_rows, src_cols]
    out = np.zeros(out_shape, dtype=pixels.dtype)
    out[dst_rows, dst_cols] = pixels[src_rows, src_cols]
    return out


class ImagePreprocessor:
    """Turns images into the float32 [N, 3, H, W] `pixel_values` a bundle's vision graph takes."""

    def __init__(self, spec: Mapping[str, Any], *, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        try:
            self.processor = str(spec["processor"])
            self.do_resize = bool(spec["do_resize"])
            self.size = {k: int(v) for k, v in spec["size"].items()}
            self.resample = Image.Resampling(int(spec["resample"]))
            self.do_center_crop = bool(spec["do_center_crop"])
            crop = spec.get("crop_size")
            self.crop_size = (int(crop["height"]), int(crop["width"])) if crop else None
            self.do_rescale = bool(spec["do_rescale"])
            self.rescale_factor = float(spec["rescale_factor"])
            self.do_normalize = bool(spec["do_normalize"])
            # float32, as transformers casts mean and std to the image's dtype.
            self.mean = np.asarray(spec["image_mean"], dtype=np.float32).reshape(-1)
            self.std = np.asarray(spec["image_std"], dtype=np.float32).reshape(-1)
            image_size = spec.get("image_size")
            self.image_size = (int(image_size[0]), int(image_size[1])) if image_size else None
        except (KeyError, TypeError, ValueError, IndexError, AttributeError, OverflowError) as exc:
            raise BundleError(
                f"the manifest's image preprocessing entry is malformed ({type(exc).__name__}: {exc}); "
                "re-export the bundle."
            ) from None
        problems = []
        if self.processor not in PROCESSORS:
            problems.append(f"processor {self.processor!r} is not one of {PROCESSORS}")
        if set(self.size) not in ({"shortest_edge"}, {"height", "width"}):
            problems.append(f"size {self.size} needs 'shortest_edge' or 'height' and 'width'")
        if any(v <= 0 or v > MAX_SPEC_SIDE for v in self.size.values()):
            problems.append(f"size {self.size} must be positive and at most {MAX_SPEC_SIDE}")
        if self.do_center_crop and (self.crop_size is None or min(self.crop_size) <= 0
                                    or max(self.crop_size) > MAX_SPEC_SIDE):
            problems.append(f"center crop needs a positive crop_size of at most {MAX_SPEC_SIDE}, "
                            f"got {spec.get('crop_size')}")
        if self.image_size is not None and not all(0 < v <= MAX_SPEC_SIDE for v in self.image_size):
            problems.append(f"image_size {list(self.image_size)} must be positive and at most "
                            f"{MAX_SPEC_SIDE}")
        if not np.isfinite(self.rescale_factor) or not np.all(np.isfinite(self.mean)) \
                or not np.all(np.isfinite(self.std)):
            problems.append("rescale_factor, image_mean and image_std must be finite")
        if self.mean.shape != (3,) or self.std.shape != (3,) or np.any(self.std == 0):
            problems.append("image_mean and image_std need 3 values each, std non-zero")
        if problems:
            raise BundleError(
                "the manifest's image preprocessing entry is invalid: " + "; ".join(problems)
                + ". Re-export the bundle."
            )
        self.max_pixels = max_pixels

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) of an image of `height` x `width` after this preprocessor's resize
        (itself when it does not resize). Raises ImageError when the resized image would hold
        more than `max_pixels`: an extreme aspect ratio (a 1 x 20000 strip whose short side is
        scaled up to 224 becomes 224 x 4480000) would otherwise take gigabytes, on every path
        (Pillow's resize, the native kernel's geometry, CLIP's towers alike)."""
        if not self.do_resize:
            return height, width
        out_h, out_w = resize_output_size(height, width, self.size)
        limit = self.max_pixels if self.max_pixels is not None else _MAX_INT32
        if out_h * out_w > limit or max(out_h, out_w) > _MAX_INT32:
            raise ImageError(
                f"the image is {width}x{height} (width x height); resizing it as this model needs "
                f"({self.size}) would make it {out_w}x{out_h} = {out_w * out_h / 1e6:.1f} megapixels, "
                f"over the limit of {limit / 1e6:.1f}. Its aspect ratio is too extreme: crop it "
                "closer to square first (or pass a larger max_pixels).")
        return out_h, out_w

    def __call__(self, images: Sequence[ImageLike] | ImageLike) -> np.ndarray:
        """Load and preprocess `images` (a sequence, or one image) into float32 [N, 3, H, W]."""
        if isinstance(images, (str, Path, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
            images = [images]
        arrays = [self.preprocess_one(load_image(im, max_pixels=self.max_pixels)) for im in images]
        if not arrays:
            raise ImageError("no images were given; pass at least one image.")
        shapes = {a.shape for a in arrays}
        if len(shapes) > 1:
            raise ImageError(
                f"the images came out in different sizes {sorted(shapes)}; this bundle does not "
                "resize them to one size, so pass images of equal size."
            )
        return np.stack(arrays)

    def preprocess_one(self, image: Image.Image) -> np.ndarray:
        """One RGB PIL image (as `load_image` returns) to float32 [3, H, W]."""
        if self.do_resize:
            height, width = self.resized_size(image.height, image.width)
            image = image.resize((width, height), resample=self.resample)
        pixels = np.asarray(image)  # H x W x 3 uint8
        if self.do_center_crop:
            pixels = center_crop(pixels, *self.crop_size)
        if self.image_size is not None and pixels.shape[:2] != self.image_size:
            raise ImageError(
                f"the image is {pixels.shape[0]}x{pixels.shape[1]} after preprocessing but the "
                f"model takes {self.image_size[0]}x{self.image_size[1]}; resize it to that size first."
            )
        # The same operations, order and dtypes as transformers: rescale in float64 then cast to
        # float32, normalize in float32.
        values = pixels
        if self.do_rescale:
            values = (values.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            values = (values.astype(np.float32, copy=False) - self.mean) / self.std
        return np.ascontiguousarray(values.transpose(2, 0, 1), dtype=np.float32)
