"""mmedge.image.load_image: every accepted source, RGB conversion equal to transformers', EXIF
orientation, and a clear ImageError for every kind of bad input."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmedge.errors import ImageError
from mmedge.vision.image import DEFAULT_MAX_PIXELS, load_image

RNG = np.random.default_rng(1234)


def png_header(width: int, height: int, bit_depth: int = 8, color_type: int = 2) -> bytes:
    """A valid PNG signature and IHDR claiming width x height, with no pixel data behind it."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    empty = chunk(b"IDAT", zlib.compress(b""))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + empty + chunk(b"IEND", b"")


def encode(im: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kwargs)
    return buf.getvalue()


def images_in_every_mode(height: int = 13, width: int = 17) -> dict[str, Image.Image]:
    rgba = RNG.integers(0, 256, (height, width, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255  # fully transparent and fully opaque pixels
    rgb = Image.fromarray(rgba[..., :3], "RGB")
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    keyed = palette.copy()
    keyed.info["transparency"] = int(np.asarray(palette)[0, 0])
    return {
        "RGB": rgb,
        "RGBA": Image.fromarray(rgba, "RGBA"),
        "L": Image.fromarray(rgba[..., 0], "L"),
        "LA": Image.fromarray(rgba[..., :2].copy(), "LA"),
        "P": palette,
        "P+transparency": keyed,
        "CMYK": Image.fromarray(rgba, "CMYK"),
        "1": Image.fromarray(rgba[..., 0] > 127),
    }


# --- sources -------------------------------------------------------------------------------------


def test_every_source_kind_gives_the_same_rgb_image(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (21, 34, 3), dtype=np.uint8)
    im = Image.fromarray(pixels)
    path = tmp_path / "frame.png"
    im.save(path)
    data = path.read_bytes()
    for source in (str(path), path, data, bytearray(data), memoryview(data), im, pixels):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (34, 21), type(source)
        np.testing.assert_array_equal(np.asarray(out), pixels)


@pytest.mark.parametrize("mode", list(images_in_every_mode()))
def test_rgb_conversion_equals_transformers(mode: str, tmp_path: Path) -> None:
    image_transforms = pytest.importorskip("transformers.image_transforms")
    im = images_in_every_mode()[mode]
    expected = image_transforms.convert_to_rgb(im, return_numpy=True)
    np.testing.assert_array_equal(np.asarray(load_image(im)), expected)
    # Through a file too (transparency keys, 1-bit and palettes survive the round trip).
    path = tmp_path / ("im.tiff" if mode == "CMYK" else "im.png")
    im.save(path)
    from_file = image_transforms.convert_to_rgb(Image.open(path), return_numpy=True)
    np.testing.assert_array_equal(np.asarray(load_image(path)), from_file)


def test_transparent_pixels_become_white() -> None:
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = [10, 20, 30, 0]  # invisible: white
    rgba[0, 1] = [10, 20, 30, 255]  # opaque: its colour
    rgba[1, 0] = [0, 0, 0, 128]  # half black over white
    for source in (Image.fromarray(rgba, "RGBA"), rgba):
        out = np.asarray(load_image(source))
        assert out[0, 0].tolist() == [255, 255, 255]
        assert out[0, 1].tolist() == [10, 20, 30]
        assert out[1, 0].tolist() in ([127, 127, 127], [128, 128, 128])


def test_rgba_array_blends_like_transformers() -> None:
    image_transforms = pytest.importorskip("transformers.image_transforms")
    rgba = RNG.integers(0, 256, (19, 23, 4), dtype=np.uint8)
    expected = image_transforms.convert_to_rgb(rgba, return_numpy=True)
    np.testing.assert_array_equal(np.asarray(load_image(rgba)), expected)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    # Pillow's own I;16 -> RGB conversion (what transformers uses) clips everything above 255 to
    # white; mmedge keeps the high byte instead.
    values = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode == "I;16"
    out = np.asarray(load_image(path))
    assert out[0, :, 0].tolist() == [0, 0, 1, 128, 255]
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()


# --- numpy arrays --------------------------------------------------------------------------------


def test_numpy_dtypes_and_layouts() -> None:
    rgb = RNG.integers(0, 256, (9, 11, 3), dtype=np.uint8)
    expected = rgb
    np.testing.assert_array_equal(np.asarray(load_image(rgb)), expected)
    np.testing.assert_array_equal(np.asarray(load_image(rgb.astype(np.uint16) * 257)), expected)
    np.testing.assert_array_equal(np.asarray(load_image(rgb / 255.0)), expected)
    np.testing.assert_array_equal(np.asarray(load_image((rgb / 255.0).astype(np.float32))), expected)
    np.testing.assert_array_equal(np.asarray(load_image(rgb[:, ::-1])), rgb[:, ::-1])  # strided view
    gray = rgb[..., 0]
    for source in (gray, gray[..., None]):
        out = np.asarray(load_image(source))
        np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((4, 5, 3), dtype=np.int64), ["int64", "(4, 5, 3)"]),
        (np.zeros((4, 5, 3), dtype=np.int8), ["int8"]),
        (np.zeros((4, 5, 3), dtype=bool), ["bool"]),
        (np.full((4, 5, 3), 2.0), ["[0, 1]"]),
        (np.full((4, 5, 3), np.nan, dtype=np.float32), ["[0, 1]"]),
        (np.zeros((3, 40, 50), dtype=np.uint8), ["(3, 40, 50)", "channels-first"]),
        (np.zeros((4, 5, 2), dtype=np.uint8), ["(4, 5, 2)"]),
        (np.zeros((2, 4, 5, 3), dtype=np.uint8), ["(2, 4, 5, 3)"]),
        (np.zeros((7,), dtype=np.uint8), ["(7,)"]),
        (np.zeros((0, 5, 3), dtype=np.uint8), ["zero size", "(0, 5, 3)"]),
    ],
)
def test_bad_numpy_arrays_are_named(array: np.ndarray, words: list[str]) -> None:
    with pytest.raises(ImageError) as info:
        load_image(array)
    for word in words:
        assert word in str(info.value)


# --- bad files -----------------------------------------------------------------------------------


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg.*does not exist"):
        load_image(missing)
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def test_not_an_image(tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a JPEG")
    with pytest.raises(ImageError, match=r"notes\.jpg is not an image in a format"):
        load_image(fake)
    with pytest.raises(ImageError, match="image bytes"):
        load_image(b"\x00\x01garbage" * 10)
    with pytest.raises(ImageError, match=r"the image bytes \(0 bytes\) is not an image in a format"):
        load_image(b"")
    # A real image in a format outside the decoders mmedge allows.
    with pytest.raises(ImageError, match="format mmedge reads"):
        load_image(encode(Image.new("RGB", (8, 8), "red"), "PCX"))


def test_truncated_jpeg(tmp_path: Path) -> None:
    pixels = RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.jpg.*truncated"):
        load_image(path)


def test_corrupt_png_chunk() -> None:
    data = bytearray(encode(Image.new("RGB", (8, 8), "red")))
    data[-20] ^= 0xFF  # inside the IDAT payload or its CRC
    with pytest.raises(ImageError, match=r"image bytes \(\d+ bytes\) could not be decoded .*truncated or corrupt"):
        load_image(bytes(data))


def test_decompression_bombs_are_refused_from_the_header() -> None:
    # 100000 x 100000 declared in a ~60-byte file: Pillow's own guard fires while opening.
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(png_header(100_000, 100_000))
    # 10000 x 10000 = 100 MP, under Pillow's hard limit but over mmedge's: refused before decoding.
    assert 10_000 * 10_000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageError, match=r"10000x10000 = 100\.0 megapixels.*max_pixels"):
        load_image(png_header(10_000, 10_000, bit_depth=1, color_type=0))


def test_max_pixels_is_configurable() -> None:
    data = encode(Image.new("RGB", (40, 30), "blue"))
    with pytest.raises(ImageError, match="40x30"):
        load_image(data, max_pixels=1000)
    assert load_image(data, max_pixels=1200).size == (40, 30)
    assert load_image(data, max_pixels=None).size == (40, 30)


def test_zero_size_and_wrong_types() -> None:
    with pytest.raises(ImageError, match="zero size"):
        load_image(Image.new("RGB", (0, 5)))
    with pytest.raises(ImageError, match="URL"):
        load_image("https://example.com/cat.jpg")
    with pytest.raises(ImageError, match="int"):
        load_image(42)  # type: ignore[arg-type]


# --- EXIF orientation ----------------------------------------------------------------------------


def exif_rotated_jpeg() -> bytes:
    """A 40x20 JPEG, left half red and right half blue, tagged orientation 6 (rotate 90 CW)."""
    pixels = np.zeros((20, 40, 3), dtype=np.uint8)
    pixels[:, :20] = [255, 0, 0]
    pixels[:, 20:] = [0, 0, 255]
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(Image.fromarray(pixels), "JPEG", quality=95, exif=exif)


def test_exif_orientation_is_applied_to_files(tmp_path: Path) -> None:
    path = tmp_path / "phone.jpg"
    path.write_bytes(exif_rotated_jpeg())
    for source in (path, path.read_bytes()):
        out = np.asarray(load_image(source)).astype(int)
        assert out.shape == (40, 20, 3)  # upright: taller than wide
        assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50  # the left (red) half is now on top
        assert out[34, 10, 2] > 200 and out[34, 10, 0] < 50  # blue at the bottom
    # A PIL image handed over in memory is used as given, as transformers does.
    assert load_image(Image.open(path)).size == (40, 20)
