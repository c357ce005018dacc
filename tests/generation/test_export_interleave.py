"""llava-interleave-qwen-0.5b's shape through the existing LLaVA recipe, as-is.

llava-hf/llava-interleave-qwen-0.5b-hf is a LlavaForConditionalGeneration: a SigLIP-so400m tower
(384 px, patch 14: 27x27 = 729 tokens, no CLS), vision_feature_layer -1, strategy "full" (all
729 patches), a gelu MLP projector, a Qwen2-0.5B text model, and a SiglipImageProcessor (384x384
bicubic, mean/std 0.5) in a LlavaProcessor. Those values are assumed from transformers' docs and
the published config (the Hub is out of reach here). This test keeps that geometry exactly with
tiny widths (a 2-layer SigLIP of width 32, models.tiny's Qwen2) and checks the export's parity,
transformers' greedy tokens and the processor's ids and pixels."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmedge  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.models.tiny import build_tiny_llava  # noqa: E402

NEW_TOKENS = 20


def scene(seed: int, size=(97, 61)) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[10:40, 20:60] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("interleave")
    folder = build_tiny_llava(root / "hf", vision="siglip", text="qwen2", seed=1, image_size=384,
                              patch_size=14, vision_feature_layer=-1,
                              vision_feature_select_strategy="full")
    manifest = export_model(str(folder), root / "bundle", precision="fp32", progress=False)
    reference = transformers.LlavaForConditionalGeneration.from_pretrained(folder).eval()
    processor = transformers.AutoProcessor.from_pretrained(folder)
    return root / "bundle", manifest, reference, processor


def _messages(prompt: str, n_images: int):
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def test_manifest_and_parity(exported):
    _, manifest, reference, _ = exported
    assert reference.config.image_seq_length == 729
    assert manifest["family"] == "llava" and manifest["image"]["num_image_tokens"] == 729
    assert manifest["image"]["image_size"] == [384, 384] and manifest["image"]["patch_size"] == 14
    parity = manifest["exporter"]["parity"]
    assert parity["greedy_tokens_agreeing"] == parity["greedy_tokens_compared"] == 16
    assert parity["max_logit_diff"] < 1e-4


@pytest.mark.parametrize("n_images", [1, 2, 0])
def test_greedy_matches_transformers(exported, n_images):
    bundle, _, reference, processor = exported
    images = [scene(i, size=(97 + 200 * i, 61)) for i in range(n_images)]
    messages = _messages("What do you see?", n_images)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=images or None, text=text, return_tensors="pt")
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=eos)
    expected = out[0, inputs["input_ids"].shape[1]:].tolist()
    expected = expected[:expected.index(eos)] if eos in expected else expected
    model = mmedge.load(bundle, device="cpu")
    model.generate(messages=messages, images=images, max_new_tokens=NEW_TOKENS)
    assert model.last_stats.token_ids == expected
    assert len(expected) >= 5, "degenerate reference: too few tokens to compare"


def test_prompt_ids_and_pixels_match_processor(exported):
    bundle, _, _, processor = exported
    images = [scene(0), scene(1, size=(20, 300))]
    messages = _messages("Compare the two pictures.", 2)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(images=images, text=text, return_tensors="np")
    model = mmedge.load(bundle, device="cpu")
    assert model.prompt_ids(messages, images) == expected["input_ids"][0].tolist()
    assert int((expected["input_ids"][0] == model.image_spec["image_token_id"]).sum()) == 2 * 729
    np.testing.assert_allclose(model.preprocess(images), expected["pixel_values"], atol=1e-6)
