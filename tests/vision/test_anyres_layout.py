"""The "anyres" image layout (LLaVA-OneVision) against transformers itself, on a tiny seeded
checkpoint (models/tiny_onevision.py: 40-px tiles of 5x5 features, pinpoints up to 6x6 tiles):
tiles equal to LlavaOnevisionImageProcessorPil's pixel_values, token counts equal to
LlavaOnevisionProcessor's expansion, and `assemble` equal to LlavaOnevisionModel's
pack_image_features (unpadding, the anyres_max_9 shrink, newlines, base image first), on images
of many sizes and aspect ratios. No export here: the layout is built from the image entry the
recipe derives from the checkpoint (tests/generation/test_export_onevision.py runs the bundle)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mmedge.errors import BundleError  # noqa: E402
from mmedge.export.families.llava_onevision import image_spec  # noqa: E402
from mmedge.export.preprocessing import read_image_processor_config, read_processor_config  # noqa: E402
from mmedge.models.tiny_onevision import build_tiny_onevision, load_processor  # noqa: E402
from mmedge.vision.layouts.anyres import AnyresLayout, bilinear_resize  # noqa: E402
from mmedge.vision.preprocess import ImagePreprocessor  # noqa: E402

# (height, width): tiny, 1-px sides, exact tiles, very wide and tall, ones that take the largest
# grid (6x6 tiles, shrunk by anyres_max_9), odd sizes between.
SIZES = [(1, 1), (3, 5), (1, 300), (300, 1), (40, 40), (41, 39), (61, 97), (240, 320),
         (20, 2000), (2000, 20), (240, 240), (1000, 1000), (333, 777), (1200, 90), (7, 241)]


def picture(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + 7 * height + width)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import json

    from safetensors.numpy import save_file

    root = tmp_path_factory.mktemp("anyres")
    folder = build_tiny_onevision(root / "hf", seed=3)
    config = json.loads((folder / "config.json").read_text())
    spec = image_spec(read_image_processor_config(folder), read_processor_config(folder), config)
    model = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(folder).eval()
    newline = model.model.image_newline.detach().numpy()
    save_file({"image_newline": newline}, str(root / "newline.safetensors"))
    spec.update(image_token_id=config["image_token_index"], image_token="<image>",
                image_newline={"file": "newline.safetensors", "dim": int(newline.shape[0])})
    return AnyresLayout(spec, None, root), model, load_processor(folder), spec, root


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_tiles_and_tokens_match_the_processor(checkpoint, size):
    layout, _, processor, _, _ = checkpoint
    image = picture(*size)
    expected = processor(images=[image], text="<image>", return_tensors="np")
    plan = layout.plan(image)
    pixels = ImagePreprocessor(layout.tile_spec)(plan.tiles)
    np.testing.assert_array_equal(pixels, expected["pixel_values"][0])
    assert expected["image_sizes"][0].tolist() == list(plan.size)
    assert plan.num_slots == int((expected["input_ids"][0] == layout.image_token_id).sum())
    assert plan.token_ids == expected["input_ids"][0].tolist()
    tokens_only = layout.plan(image, tiles=False)
    assert tokens_only.tiles == [] and tokens_only.token_ids == plan.token_ids
    assert (tokens_only.grid, tokens_only.size) == (plan.grid, plan.size)


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_assemble_matches_pack_image_features(checkpoint, size):
    layout, model, _, spec, _ = checkpoint
    plan = layout.plan(picture(*size))
    hidden = model.config.text_config.hidden_size
    tiles = torch.randn(len(plan.tiles), spec["tokens_per_tile"], hidden,
                        generator=torch.Generator().manual_seed(size[0] * 131 + size[1]))
    with torch.no_grad():
        packed, lens = model.model.pack_image_features(
            [tiles], torch.tensor([list(plan.size)]), image_newline=model.model.image_newline,
            vision_aspect_ratio=spec["vision_aspect_ratio"])
    ours = layout.assemble(plan, tiles.numpy())
    assert ours.shape == tuple(packed[0].shape) == (plan.num_slots, hidden)
    np.testing.assert_allclose(ours, packed[0].numpy(), rtol=1e-6, atol=1e-6)


def test_the_largest_grid_is_shrunk(checkpoint):
    """A big square image takes all 6x6 tiles; 30x30 features are more than 1.1^2 x 9 tiles'
    worth, so they are shrunk to 15x15 (+ 15 newlines + 25 base features)."""
    layout = checkpoint[0]
    plan = layout.plan(picture(1000, 1000))
    assert (plan.grid["rows"], plan.grid["cols"], len(plan.tiles)) == (6, 6, 37)
    assert layout.feature_shape(1000, 1000) == (15, 15, True)
    assert plan.num_slots == 15 * 15 + 15 + 25


@pytest.mark.parametrize("shape,out", [((3, 30, 30), (15, 15)), ((2, 23, 30), (13, 17)),
                                       ((4, 7, 50), (3, 21)), ((1, 5, 5), (5, 5))])
def test_bilinear_resize_is_torch_interpolate(shape, out):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(sum(shape)))
    want = torch.nn.functional.interpolate(x[None], list(out), mode="bilinear")[0].numpy()
    np.testing.assert_allclose(bilinear_resize(x.numpy(), *out), want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("key,value,words", [
    ("tokens_per_tile", 24, "not a square grid"),
    ("image_grid_pinpoints", [[40, 60]], "whole tiles"),
    ("max_num_patches", 0, "not positive"),
])
def test_a_bad_manifest_entry_is_refused(checkpoint, key, value, words):
    _, _, _, spec, root = checkpoint
    with pytest.raises(BundleError, match=words):
        AnyresLayout({**spec, key: value}, None, root)


def test_a_wrong_newline_file_is_refused(checkpoint):
    _, _, _, spec, root = checkpoint
    with pytest.raises(BundleError, match="image_newline vector"):
        AnyresLayout({**spec, "image_newline": {"file": "newline.safetensors", "dim": 7}}, None, root)
