"""Fuzz harness: untrusted image input through `load_image`, `ImagePreprocessor` (the numpy path)
and, where `mmedge._C` is built, the native `mmedge.kernels.patch_embed`.

The first byte picks the source kind: encoded bytes (PNG/JPEG/GIF/BMP/TIFF/WebP/PPM seeds, mutated),
a numpy array (shape, dtype and values from the bytes: any of HxW, HxWxC, odd dtypes, NaNs), or a
PIL image of a fuzzed mode. The image then goes through a CLIP-style (shortest edge + crop) or a
SigLIP-style (fixed size) preprocessor, and the same frame through the kernel, whose tokens must
match the numpy path's. `max_pixels` is 4 MP here, not the default 64, so that a run is fast; the
limit's logic is the same.
"""

from __future__ import annotations

import io
import sys
import warnings
from pathlib import Path

import numpy as np

from _harness import Bytes, instrumented, main

with instrumented(__name__ == "__main__", "PIL"):   # Pillow's decoders are mostly Python
    from PIL import Image

    Image.init()   # imports the format plugins now, inside the instrumentation
    from mmedge import kernels
    from mmedge.vision.image import load_image
    from mmedge.vision.inputs import patch_embed_numpy
    from mmedge.vision.preprocess import ImagePreprocessor

warnings.simplefilter("ignore")   # Pillow warns about corrupt EXIF and the like: not findings
MAX_PIXELS = 1 << 22
PATCH = 8
SPECS = {
    "clip": {"processor": "clip", "do_convert_rgb": True, "do_resize": True,
             "size": {"shortest_edge": 32}, "resample": 3, "do_center_crop": True,
             "crop_size": {"height": 32, "width": 32}, "do_rescale": True,
             "rescale_factor": 1 / 255, "do_normalize": True,
             "image_mean": [0.48145466, 0.4578275, 0.40821073],
             "image_std": [0.26862954, 0.26130258, 0.27577711], "image_size": [32, 32],
             "patch_size": PATCH},
    "siglip": {"processor": "siglip", "do_convert_rgb": True, "do_resize": True,
               "size": {"height": 24, "width": 40}, "resample": 3, "do_center_crop": False,
               "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255,
               "do_normalize": True, "image_mean": [0.5] * 3, "image_std": [0.5] * 3,
               "image_size": [24, 40], "patch_size": PATCH},
}
PREPROCESSORS = {name: ImagePreprocessor(spec, max_pixels=MAX_PIXELS) for name, spec in SPECS.items()}
_rng = np.random.default_rng(0)
# Per spec: the patch conv, a bias (SigLIP-like) and position embeddings for its token count.
WEIGHTS = {name: {"weight": _rng.standard_normal((16, 3, PATCH, PATCH)).astype(np.float32),
                  "bias": _rng.standard_normal(16).astype(np.float32),
                  "position_embedding": _rng.standard_normal(
                      ((spec["image_size"][0] // PATCH) * (spec["image_size"][1] // PATCH), 16)
                  ).astype(np.float32)}
           for name, spec in SPECS.items()}
DTYPES = [np.uint8, np.uint16, np.float32, np.float64, np.int8, np.int32, np.bool_, np.float16,
          np.complex64, np.int64]
MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBX",
         "RGBa", "La", "I;16", "I;16B", "I;16L"]


def setup(work: Path) -> None:
    pass


def seeds() -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for fmt, mode, size in [("PNG", "RGB", (5, 3)), ("PNG", "RGBA", (4, 4)), ("PNG", "P", (7, 2)),
                            ("PNG", "I;16", (3, 3)), ("JPEG", "RGB", (16, 9)), ("GIF", "P", (6, 6)),
                            ("BMP", "RGB", (3, 5)), ("TIFF", "CMYK", (4, 2)), ("WEBP", "RGB", (8, 8)),
                            ("PPM", "RGB", (2, 7)), ("PNG", "L", (1, 40)), ("PNG", "1", (9, 1))]:
        if mode == "I;16":
            im = Image.fromarray(rng.integers(0, 65535, size[::-1], dtype=np.uint16))
        else:
            im = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).convert(mode)
        buf = io.BytesIO()
        im.save(buf, fmt)
        out.append(bytes([0, len(out) % 2]) + buf.getvalue())
    out += [bytes([1, 1, 5, 7, 3, 0]) + bytes(range(200)), bytes([1, 0, 1, 200, 0, 2]) + bytes(64),
            bytes([2, 0, 4, 9, 9]) + bytes(range(100)), bytes([2, 1, 14, 3, 3]) + bytes(40)]
    return out


def _array(b: Bytes) -> np.ndarray:
    ndim = b.choice([2, 3, 3, 3, 1, 4])
    shape = [b.int(24) for _ in range(ndim)]
    if ndim == 3 and b.bool():
        shape[2] = b.choice([1, 3, 4])
    if b.int(16) == 0:   # now and then a long strip or a large frame (broadcast: costs nothing)
        shape[b.int(min(2, ndim))] = b.choice([1, 4096, 20000, 3000])
    dtype = np.dtype(b.choice(DTYPES))
    count = int(np.prod(shape)) if shape else 0
    raw = b.rest()
    if count * dtype.itemsize <= 1 << 16:
        raw = (raw or b"\0") * (count * dtype.itemsize // max(len(raw), 1) + 1)
        return np.frombuffer(raw[:count * dtype.itemsize], dtype=dtype).reshape(shape)
    return np.broadcast_to(np.frombuffer((raw or b"\0")[:1] * dtype.itemsize, dtype=dtype)[0], shape)


def _pil(b: Bytes) -> Image.Image:
    mode = b.choice(MODES)
    size = (b.int(20), b.int(20))
    data = b.rest()
    try:
        im = Image.new(mode, size)
    except (ValueError, OSError):
        return Image.new("RGB", size)
    need = len(im.tobytes())
    if need and data:
        try:
            im.frombytes((data * (need // len(data) + 1))[:need])
        except (ValueError, OSError):
            pass
    if mode in ("P", "PA") and b.bool():
        im.info["transparency"] = 0
    return im


def one_input(data: bytes) -> None:
    b = Bytes(data)
    kind, which = b.int(3), b.choice(sorted(PREPROCESSORS))
    pre = PREPROCESSORS[which]
    if kind == 0:
        source = b.rest()
    elif kind == 1:
        source = _array(b)
    else:
        source = _pil(b)
    image = load_image(source, max_pixels=MAX_PIXELS)   # ImageError for bad input: allowed
    if image.mode != "RGB" or min(image.size) < 1:
        raise AssertionError(f"load_image returned {image.mode} {image.size}")
    pixels = pre([image])
    if pixels.shape != (1, 3, *pre.image_size) or not np.all(np.isfinite(pixels)):
        raise AssertionError(f"preprocessing gave {pixels.shape}, non-finite: {not np.all(np.isfinite(pixels))}")
    if kernels.available():
        frame = np.asarray(image)
        tokens = kernels.patch_embed(frame, pre, WEIGHTS[which])
        reference = patch_embed_numpy(pixels, WEIGHTS[which])[0]
        err = float(np.abs(tokens - reference).max())
        if err > 1e-3 * (1 + float(np.abs(reference).max())):
            raise AssertionError(f"kernel and numpy path differ by {err} on a {frame.shape} frame ({which})")


if __name__ == "__main__":
    main(sys.modules[__name__])
