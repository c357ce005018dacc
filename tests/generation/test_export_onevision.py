"""A tiny seeded LLaVA-OneVision (models/tiny_onevision.py) exported to bundles and run by
mmedge: the export's own parity check (fp32: every greedy token), greedy output token-identical
to transformers' generate in fp32 for one image, two images of different sizes and text only,
the processor's exact input ids and pixel values, quantized decoders within measured bounds, and
processor configs the recipe cannot reproduce refused by name."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmedge  # noqa: E402
from mmedge.errors import UnsupportedModelError  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.models.tiny_onevision import build_tiny_onevision, load_processor  # noqa: E402

NEW_TOKENS = 20


def scene(seed: int, size=(97, 61)) -> Image.Image:
    """A small random RGB picture (width x height `size`) with a coloured block."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[10:40, 20:60] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)


# Two sizes: a 2x3-tile image, and a wide one taking 2x6 tiles whose features get shrunk.
IMAGES = {1: [scene(0)], 2: [scene(0), scene(1, size=(230, 70))], 0: []}


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    root = tmp_path_factory.mktemp("onevision")
    folder = build_tiny_onevision(root / "hf", seed=1)
    reference = transformers.LlavaOnevisionForConditionalGeneration.from_pretrained(folder).eval()
    return root, folder, reference, load_processor(folder)


@pytest.fixture(scope="module")
def fp32(hf):
    root, folder, _, _ = hf
    manifest = export_model(str(folder), root / "fp32", precision="fp32", progress=False)
    return root / "fp32", manifest


def _messages(prompt: str, n_images: int):
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def _processed(processor, messages, images):
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    return processor(images=images or None, text=text, return_tensors="pt")


def transformers_greedy(reference, processor, messages, images) -> list[int]:
    inputs = _processed(processor, messages, images)
    eos = processor.tokenizer.eos_token_id
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=eos)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return new[:new.index(eos)] if eos in new else new


def test_manifest_and_export_parity(fp32):
    bundle, manifest = fp32
    assert manifest["family"] == "llava_onevision"
    image = manifest["image"]
    assert image["layout"] == "anyres" and image["tokens_per_tile"] == 25
    assert image["max_num_patches"] == 9 and len(image["image_grid_pinpoints"]) == 36
    files = json.loads((bundle / "manifest.json").read_text())["files"]
    assert image["image_newline"]["file"] in files and image["patch_embedding"]["file"] in files
    parity = manifest["exporter"]["parity"]
    assert parity["with_image"] and parity["greedy_tokens_agreeing"] == parity["greedy_tokens_compared"] == 16
    assert parity["max_logit_diff"] < 1e-4


@pytest.mark.parametrize("n_images", [1, 2, 0])
def test_greedy_matches_transformers(hf, fp32, n_images):
    _, _, reference, processor = hf
    images = IMAGES[n_images]
    messages = _messages("What do you see?", n_images)
    expected = transformers_greedy(reference, processor, messages, images)
    model = mmedge.load(fp32[0], device="cpu")
    model.generate(messages=messages, images=images, max_new_tokens=NEW_TOKENS)
    assert model.last_stats.token_ids == expected
    assert len(expected) >= 5, "degenerate reference: too few tokens to compare"


def test_prompt_ids_and_pixels_match_processor(hf, fp32):
    """Two images of different sizes: the exact input_ids (each placeholder expanded by its own
    image's tile grid), and every tile's pixels (the processor pads the smaller image's tile list
    with zero tiles to batch them; those are not pixels of the image)."""
    _, _, _, processor = hf
    images = IMAGES[2]
    messages = _messages("Compare the two pictures.", 2)
    expected = _processed(processor, messages, images)
    model = mmedge.load(fp32[0], device="cpu")
    assert model.prompt_ids(messages, images) == expected["input_ids"][0].tolist()
    counts = [len(model.plan_image(image).tiles) for image in images]
    assert counts[0] != counts[1]
    theirs = np.concatenate([expected["pixel_values"][i, :n].numpy() for i, n in enumerate(counts)])
    np.testing.assert_array_equal(model.preprocess(images), theirs)


# Largest logit difference at the parity prompt's last position over the largest logit, measured
# on this model (seed 1, the parity prompt and image): int8 0.031, int4 0.40 (the tiny LLaVA's in
# test_export_vlm.py: 0.046-0.080 and 0.47-0.48; hidden size 64 at std 0.2 is harsh for 32-wide
# int4 blocks). Greedy agreement is no bound here: this random model's logits are near ties, and
# both measured 0 of 16 tokens agreeing; the real SmolLM2 test measures it where it matters.
QUANT_BOUNDS = {"int8": 0.08, "int4": 0.6}


@pytest.mark.parametrize("precision", sorted(QUANT_BOUNDS))
def test_quantized_decoder_within_bounds(hf, precision):
    root, folder, _, _ = hf
    manifest = export_model(str(folder), root / precision, precision=precision, progress=False)
    parity = manifest["exporter"]["parity"]
    assert parity["with_image"] and manifest["quantization"]["decoder"] == precision
    assert parity["max_logit_diff"] / parity["logit_scale"] <= QUANT_BOUNDS[precision]


def _edited_copy(hf, name: str, edit) -> str:
    root, folder, _, _ = hf
    copy = root / f"edited-{name}"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder, copy)
    path = copy / "preprocessor_config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    return str(copy)


@pytest.mark.parametrize("name,edit,words", [
    ("unknown-key", lambda c: c.update(do_magic_crop=True), "do_magic_crop"),
    ("shortest-edge", lambda c: c.update(size={"shortest_edge": 40}), "size="),
    ("partial-tiles", lambda c: c.update(image_grid_pinpoints=[[40, 60]]), "image_grid_pinpoints"),
    ("center-crop", lambda c: c.update(do_center_crop=True, crop_size={"height": 40, "width": 40}),
     "do_center_crop"),
])
def test_processor_rules_it_cannot_reproduce_are_refused(hf, tmp_path, name, edit, words):
    with pytest.raises(UnsupportedModelError, match=words):
        export_model(_edited_copy(hf, name, edit), tmp_path / "out", precision="fp32", progress=False)


@pytest.mark.parametrize("tamper,words", [
    (lambda bundle, m: m["image"]["image_newline"].update(file="../newline.safetensors"),
     "outside the bundle"),
    (lambda bundle, m: (bundle / m["image"]["image_newline"]["file"]).write_bytes(b"not safetensors"),
     "sha256|checksum|damaged|changed"),
])
def test_the_newline_file_is_checked_like_the_patch_embedding(fp32, tmp_path, tamper, words):
    from mmedge.errors import BundleError

    bundle = tmp_path / "bundle"
    shutil.copytree(fp32[0], bundle)
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    tamper(bundle, manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=words):
        mmedge.load(bundle, device="cpu")
