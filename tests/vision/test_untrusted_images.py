"""Images from people and programs mmedge does not control: every source kind gets the same pixel
limit, and every path that resizes (Pillow in ImagePreprocessor, the native kernel's geometry, and
so CLIP's towers, which go through the same VisionInput) refuses an image whose resized size would
be enormous with an ImageError saying why, instead of running out of memory. A manifest asking
for absurd sizes is refused when the preprocessor is built."""

from __future__ import annotations

import base64
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from mmedge import kernels
from mmedge.errors import BundleError, ImageError
from mmedge.vision.image import DEFAULT_MAX_PIXELS, load_image
from mmedge.vision.preprocess import MAX_SPEC_SIDE, ImagePreprocessor

MEAN, STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]


def clip_spec(size: int = 224, crop: int | None = None, patch: int = 16) -> dict:
    crop = crop or size
    return {"processor": "clip", "do_convert_rgb": True, "do_resize": True,
            "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
            "crop_size": {"height": crop, "width": crop}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": MEAN,
            "image_std": STD, "image_size": [crop, crop], "patch_size": patch}


def siglip_spec(size: int = 384, patch: int = 16) -> dict:
    return {"processor": "siglip", "do_convert_rgb": True, "do_resize": True,
            "size": {"height": size, "width": size}, "resample": 3, "do_center_crop": False,
            "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
            "image_size": [size, size], "patch_size": patch}


def identity_weights(patch: int) -> dict:
    k = 3 * patch * patch
    return {"weight": np.eye(k, dtype=np.float32).reshape(k, 3, patch, patch)}


def png_header(width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) \
        + chunk(b"IEND", b"")


# --- one pixel limit for every source ------------------------------------------------------------


def test_arrays_and_pil_images_get_the_pixel_limit_of_files() -> None:
    pixels = np.zeros((20, 30, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    for source, name in ((buf.getvalue(), "image bytes"), (pixels, "numpy image"),
                         (Image.fromarray(pixels), "PIL image")):
        with pytest.raises(ImageError, match=f"{name}.* 30x20 = 0.0 megapixels, over the limit"):
            load_image(source, max_pixels=599)
        assert load_image(source, max_pixels=600).size == (30, 20)     # the limit itself passes
        assert load_image(source, max_pixels=None).size == (30, 20)


def test_a_12000x12000_frame_is_refused_before_any_copy() -> None:
    # 432 MB if it were real; broadcast, it costs nothing until converted, which must not happen.
    frame = np.broadcast_to(np.uint8(7), (12000, 12000, 3))
    with pytest.raises(ImageError, match=r"numpy image .*12000x12000 = 144.0 megapixels"):
        load_image(frame)
    floats = np.broadcast_to(np.float32(0.5), (12000, 12000))   # float64 copy would be 1.1 GB
    with pytest.raises(ImageError, match="144.0 megapixels"):
        load_image(floats)
    assert 12000 * 12000 > DEFAULT_MAX_PIXELS


def test_a_lazily_decoded_pil_image_is_refused_before_decoding() -> None:
    # Image.open reads only the header; converting this to RGB would decode 432 MB (of nothing).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # Pillow's own, at 89 MP
        lazy = Image.open(io.BytesIO(png_header(12000, 12000)))
    with pytest.raises(ImageError, match="PIL image is 12000x12000"):
        load_image(lazy)
    with pytest.raises(ImageError, match="PIL image is 12000x12000"):
        ImagePreprocessor(siglip_spec())(lazy)


# --- resizing is bounded -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 20000, 3), (20000, 1, 3)], ids=["1x20000", "20000x1"])
def test_extreme_aspect_ratio_is_refused_by_shortest_edge_resize(shape) -> None:
    """CLIP scales the short side to 224: a 1-pixel strip would become 224 x 4480000 (3 GB)."""
    frame = np.full(shape, 100, dtype=np.uint8)
    pre = ImagePreprocessor(clip_spec(224))
    with pytest.raises(ImageError, match=r"(4480000x224|224x4480000) = 1003.5 megapixels.*aspect ratio is too extreme"):
        pre(frame)
    if kernels.available():    # the native path gives the same answer, not a different size
        with pytest.raises(ImageError, match="aspect ratio is too extreme"):
            kernels.patch_embed(frame, pre, identity_weights(16))


@pytest.mark.parametrize("shape", [(1, 20000, 3), (20000, 1, 3)], ids=["1x20000", "20000x1"])
def test_extreme_aspect_ratio_is_fine_when_the_resize_has_a_fixed_size(shape) -> None:
    """SigLIP resizes to 384 x 384 whatever the input: bounded, so the strip is answered."""
    frame = np.full(shape, 100, dtype=np.uint8)
    pre = ImagePreprocessor(siglip_spec(64, patch=16))
    out = pre(frame)
    assert out.shape == (1, 3, 64, 64) and np.all(np.isfinite(out))
    if kernels.available():
        tokens = kernels.patch_embed(frame, pre, identity_weights(16))
        assert tokens.shape == (16, 3 * 16 * 16)
        np.testing.assert_allclose(tokens[0].reshape(3, 16, 16), out[0, :, :16, :16], atol=1e-5)


def test_resize_limit_is_exactly_max_pixels_on_both_paths() -> None:
    """A 10 x 100 image under shortest_edge 32 resizes to 32 x 320 = 10240 pixels."""
    frame = np.full((10, 100, 3), 50, dtype=np.uint8)
    at_limit = ImagePreprocessor(clip_spec(32, patch=8), max_pixels=10240)
    over = ImagePreprocessor(clip_spec(32, patch=8), max_pixels=10239)
    assert at_limit.resized_size(10, 100) == (32, 320)
    assert at_limit(frame).shape == (1, 3, 32, 32)
    with pytest.raises(ImageError, match="320x32 = 0.0 megapixels, over the limit"):
        over(frame)
    if kernels.available():
        assert kernels.patch_embed(frame, at_limit, identity_weights(8)).shape == (16, 192)
        with pytest.raises(ImageError, match="320x32"):
            kernels.patch_embed(frame, over, identity_weights(8))


def test_one_pixel_images_resize_to_the_model_size() -> None:
    """The smallest image cannot round to a 0-pixel side: shortest_edge keeps the long side at
    least the target, a fixed size is the size."""
    one = np.full((1, 1, 3), 200, dtype=np.uint8)
    for spec in (clip_spec(32, patch=8), siglip_spec(32, patch=8)):
        pre = ImagePreprocessor(spec)
        assert pre.resized_size(1, 1) == (32, 32)
        assert pre(one).shape == (1, 3, 32, 32)
        if kernels.available():
            assert kernels.patch_embed(one, pre, identity_weights(8)).shape == (16, 192)


@pytest.mark.parametrize("change, words", [
    ({"size": {"shortest_edge": 10**6}}, "at most 8192"),
    ({"size": {"height": 384, "width": 0}}, "must be positive"),
    ({"crop_size": {"height": 10**6, "width": 10**6}}, "crop_size of at most 8192"),
    ({"image_size": [0, 224]}, "image_size"),
    ({"image_size": [224, 10**9]}, "image_size"),
    ({"rescale_factor": float("inf")}, "finite"),
    ({"image_mean": [float("nan")] * 3}, "finite"),
    ({"size": [224]}, "malformed"),                       # not a table: was an AttributeError
    ({"size": {"shortest_edge": float("inf")}}, "malformed"),   # was an OverflowError
], ids=["huge-shortest-edge", "zero-width", "huge-crop", "zero-image-size", "huge-image-size",
        "inf-rescale", "nan-mean", "size-list", "inf-size"])
def test_absurd_sizes_in_a_manifest_are_refused_up_front(change: dict, words: str) -> None:
    with pytest.raises(BundleError, match=words):
        ImagePreprocessor({**clip_spec(224), **change})
    assert MAX_SPEC_SIDE == 8192


# --- inputs the fuzzer found (tests/fuzz/fuzz_image.py) --------------------------------------------

# A 2x4 RGBA TIFF whose StripOffsets tag (273) is stored as a DOUBLE: Pillow reached
# `seek(2.0e-323)` and raised TypeError, which escaped load_image.
TIFF_WITH_FLOAT_STRIP_OFFSET = base64.b64decode(
    "SUkqAAgAAAAKAAABBAABAAAABAAAAAEBBAABAAAAAgAAAAIBAwAEAAAAhgAAAAMBAAMBAAAkAQAAAAYBAwABAAAABQAA"
    "ABEBDAABAAAAjgAAABUBAwABAAAABAAAABYBBAABAAAAAgAAABcBBAABAAAAIAAAABwBAwABAAAAAQAAAAAAgAAIAAgA"
    "CAAIAIJHggD+FNYAil2BACXNvAAK/xMAckn4ACyUEQDw4WMA")


def test_tiff_with_a_float_strip_offset_is_an_image_error() -> None:
    with pytest.raises(ImageError, match=r"image bytes \(174 bytes\) could not be decoded .*Re-download"):
        load_image(TIFF_WITH_FLOAT_STRIP_OFFSET)
