"""Image input: turn whatever a user hands mmedge (a file, bytes, a PIL image, a camera frame) into
one RGB PIL image, or raise `ImageError` saying what is wrong with it.

What lives here: decoding with Pillow behind a pixel-count guard, EXIF orientation for files, and
the conversion to RGB, which follows transformers' `convert_to_rgb` (transparent pixels are
composited onto white). What does not: resizing, cropping and normalization, which belong to
`mmedge.vision.preprocess`.
"""

from __future__ import annotations

import io
import os
import struct
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmedge.errors import ImageError

__all__ = ["DEFAULT_MAX_PIXELS", "ImageLike", "load_image"]

# Larger images are refused before decoding: a 64-megapixel limit passes any phone photo and stops
# files crafted to expand into gigabytes (a tiny PNG can declare 100000 x 100000 pixels).
DEFAULT_MAX_PIXELS = 64_000_000

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]

# What Pillow raises for files it cannot decode, besides OSError (which covers truncation). TypeError:
# a TIFF whose strip offset tag holds a float reaches `seek(float)` (found by tests/fuzz/fuzz_image.py).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, TypeError)
_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
# The only formats decoded. Images come from users and the network, every extra decoder is attack
# surface, and some are worse than that (EPS runs Ghostscript).
_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "GIF", "BMP", "TIFF", "PPM", "AVIF")


def load_image(source: ImageLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Return `source` as an RGB PIL image.

    `source` may be:
    - a path (str or os.PathLike) or the encoded bytes of a JPEG, PNG, WebP, GIF, BMP, TIFF, PPM
      or AVIF file (multi-frame files give their first frame);
    - a PIL image of any mode;
    - a numpy array laid out channels-last, as a camera frame is: HxW (grayscale), HxWx1, HxWx3
      (RGB) or HxWx4 (RGBA), of dtype uint8, uint16 (scaled to 8 bits by dropping the low byte)
      or float in [0, 1] (scaled by 255 and rounded).

    Conversion to RGB matches transformers' image processors: an image with an alpha band or a
    transparency key (RGBA, LA, PA, P or L with transparency) is composited onto a white
    background, for PIL images the way `PIL.Image.alpha_composite` does it and for RGBA arrays with
    transformers' float blend and rounding; other modes (L, P, CMYK, 1, ...) go through
    `Image.convert("RGB")`. One deliberate difference: 16-bit grayscale (mode I;16, as 16-bit PNGs
    open) is scaled to 8 bits first, where transformers lets Pillow clip every value above 255 to
    white.

    Files and bytes are turned upright according to their EXIF orientation tag, so a phone photo
    is not seen lying on its side (transformers' `load_image` does the same for paths). Its
    processors do not do this for a PIL image or an array they are handed, and neither does
    mmedge: images passed in memory are used as given.

    `max_pixels` bounds width x height of every source: of files and bytes from the header,
    before any pixel is decoded; of PIL images and arrays before they are converted (an array
    or a lazily decoded PIL image over it would otherwise cost several times its size again). None
    lifts mmedge's bound (for files Pillow's own `Image.MAX_IMAGE_PIXELS` still applies).
    """
    if isinstance(source, Image.Image):
        _within(source.size, "the PIL image", max_pixels)
        return _to_rgb(_nonempty(source, "the PIL image"), "the PIL image")
    if isinstance(source, np.ndarray):
        if source.ndim in (2, 3):
            _within((source.shape[1], source.shape[0]), f"the numpy image (shape {source.shape})",
                    max_pixels)
        return _from_array(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _decode(io.BytesIO(data), f"the image bytes ({len(data)} bytes)", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if str(source).startswith(("http://", "https://")):
            raise ImageError(f"{source} is a URL; mmedge reads local files only. Download it first.")
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "does not exist"
            raise ImageError(f"image file {path} {what}. Check the path (cwd is {os.getcwd()}).")
        return _decode(path, f"image file {path}", max_pixels)
    raise ImageError(
        f"cannot read an image from a {type(source).__name__}; pass a file path, the file's bytes, "
        "a PIL image or a numpy array (HxW, HxWx3 or HxWx4)."
    )


def _decode(fp: Path | io.BytesIO, name: str, max_pixels: int | None) -> Image.Image:
    """Open, size-check, decode and orient one encoded image."""
    try:
        with warnings.catch_warnings():
            # The pixel limit is enforced below, with mmedge's limit and message.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.init()
            im = Image.open(fp, formats=[f for f in _FORMATS if f in Image.OPEN])
    except Image.DecompressionBombError as exc:
        raise ImageError(
            f"{name} is refused as a possible decompression bomb: {exc} Downscale the image first."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not an image in a format mmedge reads ({', '.join(_FORMATS)}). Convert it "
            "to PNG or JPEG."
        ) from None
    except PermissionError:
        raise ImageError(f"{name} cannot be read: permission denied.") from None
    except _DECODE_ERRORS as exc:
        raise ImageError(f"{name} is corrupt and could not be opened ({exc}).") from None

    with im:
        _nonempty(im, name)
        _within(im.size, name, max_pixels)
        try:
            im.load()
        except _DECODE_ERRORS as exc:
            raise ImageError(
                f"{name} could not be decoded ({exc}); the file is truncated or corrupt. "
                "Re-download or re-save it."
            ) from None
        try:
            upright = ImageOps.exif_transpose(im)
        except _DECODE_ERRORS:
            upright = im.copy()  # unreadable EXIF: the pixels are still good, keep them as stored
        return _to_rgb(upright, name)


def _within(size: tuple[int, int], name: str, max_pixels: int | None) -> None:
    """Refuses an image of `size` (width, height) over `max_pixels`."""
    width, height = size
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height / 1e6:.1f} megapixels, over the limit "
            f"of {max_pixels / 1e6:.1f} megapixels that bounds the memory an image may take (and "
            "guards against decompression bombs). If the image is genuine, downscale it or pass a "
            "larger max_pixels."
        )


def _nonempty(im: Image.Image, name: str) -> Image.Image:
    width, height = im.size
    if width == 0 or height == 0:
        raise ImageError(f"{name} has zero size ({width}x{height}); an image needs at least one pixel.")
    return im


def _to_rgb(im: Image.Image, name: str) -> Image.Image:
    """transformers' `convert_to_rgb` for PIL images, after scaling 16-bit grayscale to 8 bits."""
    try:
        if im.mode in _SIXTEEN_BIT_MODES:
            im = Image.fromarray((np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8), "L")
        if "A" in im.getbands() or im.info.get("transparency") is not None:
            white = Image.new("RGBA", im.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
        return im if im.mode == "RGB" else im.convert("RGB")
    except _DECODE_ERRORS as exc:  # a lazily loaded PIL image can fail to decode here
        raise ImageError(f"{name} could not be converted to RGB ({exc}).") from None


def _from_array(array: np.ndarray) -> Image.Image:
    """A channels-last camera frame as an RGB image; RGBA is blended onto white as transformers does."""
    shape = tuple(array.shape)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 3, 4):
        hint = ""
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            hint = " It looks channels-first; pass array.transpose(1, 2, 0)."
        raise ImageError(
            f"a numpy image must be HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA), got shape {shape}.{hint}"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ImageError(f"the numpy image has zero size (shape {shape}); it needs at least one pixel.")

    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = (array >> 8).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or array.min() < 0.0 or array.max() > 1.0:
            raise ImageError(
                f"a float numpy image (shape {shape}, dtype {array.dtype}) must hold values in "
                f"[0, 1], got [{array.min()}, {array.max()}]; for 0-255 values pass "
                "array.astype(np.uint8)."
            )
        pixels = np.rint(array.astype(np.float64) * 255.0).astype(np.uint8)
    else:
        raise ImageError(
            f"a numpy image must be uint8, uint16 or float in [0, 1], got dtype {array.dtype} "
            f"(shape {shape}); convert it, e.g. array.astype(np.uint8) for 0-255 values."
        )

    channels = pixels.shape[2]
    if channels == 1:
        return Image.fromarray(np.ascontiguousarray(pixels[:, :, 0]), "L").convert("RGB")
    if channels == 4:
        # transformers' convert_to_rgb for integer arrays, in float64 then rounded.
        alpha = pixels[..., 3:4] / 255
        pixels = np.round(alpha * pixels[..., :3] + (1 - alpha) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(pixels), "RGB")
