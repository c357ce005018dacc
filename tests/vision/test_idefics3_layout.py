"""The "idefics3" image layout (SmolVLM) against transformers' own processor on the real
SmolVLM-256M-Instruct processor files (../shared/fixtures/hf/smolvlm-256m-instruct): the tile grid,
every tile's pixel values and the prompt's token ids, on images of many sizes and aspect ratios
(1-px sides, smaller than a tile, exactly a tile, the largest grid, extreme strips), with and
without splitting, and for SmolVLM2's image processor class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

transformers = pytest.importorskip("transformers")

from mmedge.text import Tokenizer  # noqa: E402
from mmedge.vision.layouts import image_layout  # noqa: E402
from mmedge.vision.preprocess import ImagePreprocessor  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf" / "smolvlm-256m-instruct"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"needs the shared fixtures at {FIXTURE}")

# (width, height)
SIZES = [(1, 1), (1, 700), (700, 1), (37, 23), (512, 512), (513, 200), (640, 480), (480, 640),
         (1000, 999), (2048, 2048), (4000, 300), (300, 5000), (511, 1023), (3000, 2000)]
PROMPT = "User:<image>Describe it.<end_of_utterance>\nAssistant:"


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed + width * 7 + height)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1),
                     (x + y) % 256], axis=-1).astype(np.int64)
    noise = rng.integers(-20, 21, base.shape)
    return Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))


def _spec(processor, **overrides) -> dict:
    ip = processor.image_processor
    spec = {
        "layout": "idefics3", "processor": "idefics3", "do_convert_rgb": True,
        "do_resize": ip.do_resize, "size": dict(ip.size), "resample": int(ip.resample),
        "do_image_splitting": ip.do_image_splitting, "max_image_size": dict(ip.max_image_size),
        "do_rescale": ip.do_rescale, "rescale_factor": ip.rescale_factor,
        "do_normalize": ip.do_normalize, "image_mean": list(ip.image_mean),
        "image_std": list(ip.image_std), "patch_size": 16, "tokens_per_tile": processor.image_seq_len,
        "image_token": "<image>", "image_token_id": processor.image_token_id,
        "fake_image_token": "<fake_token_around_image>", "global_image_token": "<global-img>",
    }
    spec["image_size"] = [spec["max_image_size"]["longest_edge"]] * 2
    spec.update(overrides)
    return spec


@pytest.fixture(scope="module")
def tokenizer():
    special = json.loads((FIXTURE / "special_tokens_map.json").read_text())
    return Tokenizer(FIXTURE / "tokenizer.json", {"special_tokens": {
        k: v if isinstance(v, str) else v.get("content") for k, v in special.items()
        if isinstance(v, (str, dict))}})


def _processor(image_processor_class: str = "Idefics3ImageProcessorPil", **overrides):
    settings = json.loads((FIXTURE / "preprocessor_config.json").read_text())
    settings = {k: v for k, v in settings.items() if k not in ("image_processor_type", "processor_class")}
    settings.update(overrides)
    image_processor = getattr(transformers, image_processor_class)(**settings)
    tok = transformers.AutoTokenizer.from_pretrained(str(FIXTURE))
    seq = json.loads((FIXTURE / "processor_config.json").read_text())["image_seq_len"]
    return transformers.Idefics3Processor(image_processor, tok, image_seq_len=seq)


def _ours(layout, tokenizer, image):
    plan = layout.plan(image)
    ids = []
    for i in tokenizer.encode(PROMPT):
        ids.extend(plan.token_ids if i == layout.image_token_id else [i])
    return plan, ids


CASES = [("Idefics3ImageProcessorPil", {}), ("SmolVLMImageProcessorPil", {}),
         ("Idefics3ImageProcessorPil", {"do_image_splitting": False}),
         ("Idefics3ImageProcessorPil", {"size": {"longest_edge": 1024}}),
         ("Idefics3ImageProcessorPil", {"resample": 3})]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0][:7]}-{'-'.join(map(str, c[1].items())) or 'real'}")
def test_tiles_pixels_and_ids_equal_the_processor(tokenizer, case):
    cls, overrides = case
    processor = _processor(cls, **overrides)
    layout = image_layout(_spec(processor), tokenizer, FIXTURE)
    tiles = ImagePreprocessor(layout.tile_spec)
    sizes = SIZES if not overrides else SIZES[::3]
    for width, height in sizes:
        image = picture(width, height)
        expected = processor(text=PROMPT, images=[image], return_tensors="np")
        plan, ids = _ours(layout, tokenizer, image)
        where = f"{width}x{height}"
        counted = layout.plan(image, tiles=False)      # what prompt counting uses: no resizing
        assert (counted.token_ids, counted.num_slots, counted.tiles) == (plan.token_ids, plan.num_slots, [])
        assert ids == expected["input_ids"][0].tolist(), where
        pixels = expected["pixel_values"][0]
        assert len(plan.tiles) == len(pixels), where
        assert plan.num_slots == len(pixels) * processor.image_seq_len, where
        assert expected["pixel_attention_mask"].all(), where   # full tiles: no mask needed
        np.testing.assert_allclose(tiles(plan.tiles), pixels, atol=1e-6, err_msg=where)


def test_grid_follows_the_processor_rules(tokenizer):
    processor = _processor()
    layout = image_layout(_spec(processor), tokenizer, FIXTURE)
    # The longest edge goes to 2048 (up or down), so every image is split; the grid follows the
    # aspect ratio; 4096 caps nothing here because 2048 < 4096.
    assert layout.grid(480, 640) == (3, 4)
    assert layout.grid(1, 1) == (4, 4)
    assert layout.grid(5000, 300) == (4, 1)
    for (w, h) in SIZES:
        n, rows, cols = processor.image_processor.get_number_of_image_patches(h, w)
        assert layout.grid(h, w) == (rows, cols), (w, h)


def test_describe_names_the_grid_and_token_count(tokenizer):
    layout = image_layout(_spec(_processor()), tokenizer, FIXTURE)
    plan = layout.plan(picture(640, 480))
    assert layout.describe(plan) == f"640x480 px -> 3x4 tiles + a global view, {len(plan.token_ids)} tokens"
    assert plan.num_slots == 13 * 64
