"""mmedge.preprocess.ImagePreprocessor against transformers' CLIP and SigLIP image processors (their
Pillow backends, the reference semantics), and mmedge.export.preprocessing.image_spec_from_hf."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mmedge.errors import BundleError, ImageError, UnsupportedModelError
from mmedge.export.preprocessing import image_spec_from_hf
from mmedge.vision.preprocess import ImagePreprocessor, center_crop, resize_output_size

HF_FIXTURES = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf"
TOLERANCE = 1e-5  # measured: 0.0, the same float32 operations in the same order
RNG = np.random.default_rng(7)

# Inline configs as published on the Hub (openai/clip-vit-large-patch14-336 as used by LLaVA-1.5,
# google/siglip-so400m-patch14-384), so the comparison needs no fixture files.
CLIP_336 = (
    {
        "crop_size": 336,
        "do_center_crop": True,
        "do_normalize": True,
        "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor",
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "resample": 3,
        "size": 336,
    },
    {"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14},
)
SIGLIP_384 = (
    {
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_processor_type": "SiglipImageProcessor",
        "image_std": [0.5, 0.5, 0.5],
        "processor_class": "SiglipProcessor",
        "resample": 3,
        "rescale_factor": 0.00392156862745098,
        "size": {"height": 384, "width": 384},
    },
    {"model_type": "siglip_vision_model", "image_size": 384, "patch_size": 14},
)
# Resize shorter than the crop: transformers zero-pads the crop; bilinear filter.
CLIP_PADDED = (
    {
        "image_processor_type": "CLIPImageProcessor",
        "size": {"shortest_edge": 200},
        "crop_size": {"height": 224, "width": 224},
        "resample": 2,
    },
    {"model_type": "clip_vision_model", "image_size": 224, "patch_size": 16},
)

SIZES = [(1, 1), (7, 300), (300, 7), (223, 224), (224, 223), (480, 640), (1080, 1920), (333, 517),
         (2, 3)]
MODES = ["RGB", "RGBA", "L", "LA", "P", "P+transparency", "CMYK", "1"]


def clip_b32() -> tuple[dict, dict]:
    folder = HF_FIXTURES / "clip-vit-base-patch32"
    if not folder.is_dir():
        pytest.skip(f"{folder} is absent (the shared fixtures live beside the repository)")
    config = json.loads((folder / "config.json").read_text())
    return json.loads((folder / "preprocessor_config.json").read_text()), config["vision_config"]


def hf_processor(preprocessor_config: dict[str, Any]):
    """transformers' Pillow-backend processor, built from the config as from_pretrained does."""
    pytest.importorskip("transformers")
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    name = str(preprocessor_config.get("image_processor_type"))
    cls = SiglipImageProcessorPil if name.startswith("Siglip") else CLIPImageProcessorPil
    return cls.from_dict(preprocessor_config)


CONFIGS = {
    "clip-b32": clip_b32,
    "clip-336": lambda: CLIP_336,
    "siglip-384": lambda: SIGLIP_384,
    "clip-padded": lambda: CLIP_PADDED,
}


@pytest.fixture(params=list(CONFIGS), scope="module")
def pair(request) -> tuple[ImagePreprocessor, Any]:
    preprocessor_config, vision_config = CONFIGS[request.param]()
    spec = image_spec_from_hf(preprocessor_config, vision_config)
    spec = json.loads(json.dumps(spec))  # as the bundle stores and reads it
    return ImagePreprocessor(spec), hf_processor(preprocessor_config)


def assert_matches(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.dtype == np.float32 and ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= TOLERANCE


def smooth_random_image(height: int, width: int) -> np.ndarray:
    """Noise plus gradients, so resampling filters have both edges and ramps to work on."""
    y, x = np.mgrid[0:height, 0:width]
    ramp = (x * 255 // max(width - 1, 1) + y * 128 // max(height - 1, 1)) % 256
    noise = RNG.integers(0, 64, (height, width, 3))
    return ((ramp[..., None] + noise) % 256).astype(np.uint8)


def image_in_mode(mode: str, height: int = 61, width: int = 83) -> Image.Image:
    alpha = RNG.integers(0, 256, (height, width), dtype=np.uint8)
    rgba = np.dstack([smooth_random_image(height, width), alpha])
    if mode == "RGBA":
        return Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        return Image.fromarray(np.ascontiguousarray(rgba[..., [0, 3]]), "LA")
    if mode == "CMYK":
        return Image.fromarray(rgba, "CMYK")
    rgb = Image.fromarray(rgba[..., :3], "RGB")
    if mode.startswith("P"):
        im = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
        if mode == "P+transparency":
            im.info["transparency"] = 3
        return im
    return rgb.convert(mode)  # RGB, L, 1


# --- parity with transformers --------------------------------------------------------------------


@pytest.mark.parametrize("height, width", SIZES)
def test_sizes_match_transformers(pair, height: int, width: int) -> None:
    ours, hf = pair
    im = Image.fromarray(smooth_random_image(height, width))
    assert_matches(ours([im]), hf(im, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("mode", MODES)
def test_modes_match_transformers(pair, mode: str) -> None:
    ours, hf = pair
    im = image_in_mode(mode)
    assert_matches(ours([im]), hf(im, return_tensors="np")["pixel_values"])


def test_sixteen_bit_images_match_transformers_on_their_high_byte(pair) -> None:
    # transformers lets Pillow clip I;16 to 255 (an almost white image); mmedge keeps the high byte.
    ours, hf = pair
    wide = (smooth_random_image(45, 70)[..., 0].astype(np.uint16) << 8) | 0xA5
    sixteen = Image.fromarray(wide)
    assert sixteen.mode == "I;16"
    high_byte = Image.fromarray((wide >> 8).astype(np.uint8), "L")
    assert_matches(ours([sixteen]), hf(high_byte, return_tensors="np")["pixel_values"])


def test_numpy_frames_match_transformers(pair) -> None:
    ours, hf = pair
    rgb = smooth_random_image(57, 91)
    assert_matches(ours([rgb]), hf(rgb, return_tensors="np")["pixel_values"])
    rgba = np.dstack([rgb, RNG.integers(0, 256, rgb.shape[:2], dtype=np.uint8)])
    assert_matches(ours([rgba]), hf(rgba, return_tensors="np")["pixel_values"])
    # Grayscale frames: transformers takes them as PIL "L" images (it rejects 2-D arrays).
    gray = rgb[..., 1]
    assert_matches(ours([gray]), hf(Image.fromarray(gray, "L"), return_tensors="np")["pixel_values"])


def test_files_and_batches_match_transformers(pair, tmp_path: Path) -> None:
    ours, hf = pair
    modes = ["RGB", "RGBA", "P"]
    images = [image_in_mode(mode, 40 + 9 * i, 97 - 11 * i) for i, mode in enumerate(modes)]
    paths = []
    for i, im in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        im.save(paths[-1])
    reference = hf([Image.open(p) for p in paths], return_tensors="np")["pixel_values"]
    ours_from_files = ours(paths)
    assert ours_from_files.shape[0] == 3
    assert_matches(ours_from_files, reference)
    assert_matches(ours([paths[0].read_bytes(), images[1], paths[2]]), reference)


def test_exif_rotated_photo_matches_transformers_on_the_upright_image(pair, tmp_path: Path) -> None:
    from PIL import ImageOps

    ours, hf = pair
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    Image.fromarray(smooth_random_image(120, 250)).save(path, quality=92, exif=exif)
    upright = ImageOps.exif_transpose(Image.open(path))
    assert upright.size == (120, 250)
    assert_matches(ours([path]), hf(upright, return_tensors="np")["pixel_values"])


@pytest.mark.parametrize("resample", [0, 1, 2, 4, 5])
def test_other_filters_match_transformers(resample: int) -> None:
    config = dict(SIGLIP_384[0], resample=resample, size={"height": 64, "width": 48})
    ours = ImagePreprocessor(image_spec_from_hf(config, dict(SIGLIP_384[1], image_size=[64, 48])))
    im = Image.fromarray(smooth_random_image(100, 71))
    assert_matches(ours([im]), hf_processor(config)(im, return_tensors="np")["pixel_values"])


# --- the size rules on their own -----------------------------------------------------------------


def test_resize_output_size_truncates_like_transformers() -> None:
    assert resize_output_size(480, 640, {"shortest_edge": 224}) == (224, 298)  # 298.67 -> 298
    assert resize_output_size(640, 480, {"shortest_edge": 224}) == (298, 224)
    assert resize_output_size(7, 300, {"shortest_edge": 224}) == (224, 9600)
    assert resize_output_size(5, 5, {"shortest_edge": 224}) == (224, 224)
    assert resize_output_size(5, 9, {"height": 384, "width": 320}) == (384, 320)


def test_center_crop_offsets_and_padding() -> None:
    pixels = np.arange(5 * 6, dtype=np.uint8).reshape(5, 6, 1) + 1
    np.testing.assert_array_equal(center_crop(pixels, 3, 3)[..., 0], pixels[1:4, 1:4, 0])
    padded = center_crop(pixels, 8, 9)[..., 0]
    assert padded.shape == (8, 9)
    np.testing.assert_array_equal(padded[2:7, 2:8], pixels[..., 0])  # offsets ceil(3/2), ceil(3/2)
    assert padded.sum() == pixels.sum()
    mixed = center_crop(pixels, 2, 10)[..., 0]  # crop rows, pad columns
    np.testing.assert_array_equal(mixed[:, 2:8], pixels[1:3, :, 0])


# --- image_spec_from_hf --------------------------------------------------------------------------


def test_spec_from_the_real_clip_config() -> None:
    spec = image_spec_from_hf(*clip_b32())
    assert spec == {
        "processor": "clip",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": 224},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 224, "width": 224},
        "do_rescale": True,
        "rescale_factor": 0.00392156862745098,
        "do_normalize": True,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "image_size": [224, 224],
        "patch_size": 32,
    }


def test_spec_from_old_style_and_siglip_configs() -> None:
    clip = image_spec_from_hf(*CLIP_336)  # integer size and crop_size, no rescale keys
    assert clip["size"] == {"shortest_edge": 336} and clip["crop_size"] == {"height": 336, "width": 336}
    assert clip["rescale_factor"] == 1 / 255 and clip["do_rescale"] and clip["image_size"] == [336, 336]
    siglip = image_spec_from_hf(*SIGLIP_384)
    assert siglip["processor"] == "siglip" and siglip["size"] == {"height": 384, "width": 384}
    assert siglip["do_center_crop"] is False and siglip["crop_size"] is None
    assert siglip["image_mean"] == [0.5, 0.5, 0.5] and siglip["patch_size"] == 14
    # No class named: the vision model type decides, as in transformers' Auto classes.
    untyped = {k: v for k, v in SIGLIP_384[0].items() if k != "image_processor_type"}
    assert image_spec_from_hf(untyped, SIGLIP_384[1])["processor"] == "siglip"
    fast = dict(CLIP_PADDED[0], image_processor_type="CLIPImageProcessorFast", do_center_crop=None)
    assert image_spec_from_hf(fast, CLIP_PADDED[1])["do_center_crop"] is True  # null -> class default
    nulls = dict(CLIP_336[0], size={"shortest_edge": 336, "longest_edge": None})
    assert image_spec_from_hf(nulls, CLIP_336[1])["size"] == {"shortest_edge": 336}


def test_unsupported_processors_are_refused() -> None:
    folder = HF_FIXTURES / "smolvlm-256m-instruct"
    idefics3 = (
        json.loads((folder / "preprocessor_config.json").read_text())
        if folder.is_dir()
        else {"image_processor_type": "Idefics3ImageProcessor", "size": {"longest_edge": 2048}}
    )
    supported = "Idefics3ImageProcessor.*CLIPImageProcessor.*SiglipImageProcessor"
    with pytest.raises(UnsupportedModelError, match=supported):
        image_spec_from_hf(idefics3, {"image_size": 512, "patch_size": 16})
    with pytest.raises(UnsupportedModelError, match="longest_edge"):
        image_spec_from_hf(dict(CLIP_336[0], size={"longest_edge": 336}), CLIP_336[1])
    # transformers reads an integer SigLIP size as the shortest edge: the output size varies.
    with pytest.raises(UnsupportedModelError, match="varying sizes"):
        image_spec_from_hf(dict(SIGLIP_384[0], size=384), SIGLIP_384[1])
    with pytest.raises(UnsupportedModelError, match="336x336 images but the vision tower takes 224x224"):
        image_spec_from_hf(CLIP_336[0], dict(CLIP_336[1], image_size=224))


# --- bad specs and inputs at run time ------------------------------------------------------------


def test_malformed_spec_is_a_bundle_error() -> None:
    spec = image_spec_from_hf(*SIGLIP_384)
    with pytest.raises(BundleError, match="malformed"):
        ImagePreprocessor({k: v for k, v in spec.items() if k != "size"})
    with pytest.raises(BundleError, match="processor 'pixtral'"):
        ImagePreprocessor(dict(spec, processor="pixtral"))
    with pytest.raises(BundleError, match="image_mean"):
        ImagePreprocessor(dict(spec, image_mean=[0.5, 0.5]))


def test_bad_run_time_inputs() -> None:
    spec = image_spec_from_hf(*SIGLIP_384)
    with pytest.raises(ImageError, match="no images"):
        ImagePreprocessor(spec)([])
    unresized = ImagePreprocessor(dict(spec, do_resize=False))
    with pytest.raises(ImageError, match="10x20 after preprocessing but the model takes 384x384"):
        unresized([np.zeros((10, 20, 3), dtype=np.uint8)])
    too_big = r"the image bytes \(\d+ bytes\) is 20x20 = [\d.]+ megapixels, over the limit"
    with pytest.raises(ImageError, match=too_big):
        ImagePreprocessor(spec, max_pixels=100)([_png(20, 20)])
    one = ImagePreprocessor(spec)(np.zeros((10, 20, 3), dtype=np.uint8))  # a single frame, not a list
    assert one.shape == (1, 3, 384, 384)


def _png(width: int, height: int) -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (width, height), "green").save(buf, "PNG")
    return buf.getvalue()
