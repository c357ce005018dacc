"""SmolVLM (Idefics3ForConditionalGeneration and SmolVLM2's SmolVLMForConditionalGeneration),
tiny seeded models built from the real SmolVLM-256M-Instruct config, tokenizer, chat template and
processor settings (../shared/fixtures/hf/smolvlm-256m-instruct; widths and depths shrunk, the
512-px tiles, 16-px patches and 64 tokens a tile kept), exported and run by mmedge:

- greedy output token-identical to transformers' generate in fp32 for one image (split into
  tiles), two images of different sizes and grids, and text only;
- prompt ids and every tile's pixel values equal to the HF processor's;
- the int8/int4 decoders within measured bounds;
- the export's own parity check, the transformers-5 folder layout (no preprocessor_config.json),
  and the bad inputs: a context the tiles overflow, 1-px images, image tokens typed in the prompt,
  an image-processor config the recipe does not know.

SmolVLM2's `SmolVLMProcessor` cannot be built without torchvision (see models/smolvlm.py), so its
reference inputs come from the Idefics3Processor around SmolVLM2's image processor class: the
prompt expansion is the same code in both processors.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmedge  # noqa: E402
from _scenes import scene  # noqa: E402
from mmedge.errors import PromptError, UnsupportedModelError  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.models.smolvlm import build_tiny_smolvlm, smolvlm_processor  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "hf" / "smolvlm-256m-instruct"
pytestmark = pytest.mark.skipif(not FIXTURE.is_dir(), reason=f"needs the shared fixtures at {FIXTURE}")
NEW_TOKENS = 16


WIDE, TALL = scene(0, (320, 240)), scene(1, (150, 420))    # 3x4 and 4x2 tiles (+ global views)


@pytest.fixture(scope="module", params=["idefics3", "smolvlm2"])
def exported(request, tmp_path_factory):
    variant = request.param
    root = tmp_path_factory.mktemp(f"smolvlm-{variant}")
    folder = build_tiny_smolvlm(root / "hf", FIXTURE, variant, seed=1)
    manifest = export_model(str(folder), root / "bundle", precision="fp32", progress=False)
    reference = transformers.AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = smolvlm_processor(FIXTURE, variant)
    return root / "bundle", manifest, reference, processor


def _messages(prompt: str, n_images: int):
    content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
    return [{"role": "user", "content": content}]


def transformers_greedy(reference, processor, messages, images) -> list[int]:
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=images or None, text=text, return_tensors="pt")
    eos = reference.generation_config.eos_token_id
    with torch.no_grad():
        out = reference.generate(**inputs, max_new_tokens=NEW_TOKENS, do_sample=False)
    new = out[0, inputs["input_ids"].shape[1]:].tolist()
    return new[:new.index(eos)] if eos in new else new


@pytest.mark.parametrize("images", [[WIDE], [WIDE, TALL], []], ids=["one", "two", "text"])
def test_greedy_matches_transformers(exported, images):
    bundle, _, reference, processor = exported
    messages = _messages("What do you see?", len(images))
    expected = transformers_greedy(reference, processor, messages, images)
    model = mmedge.load(bundle, device="cpu")
    model.generate(messages=messages, images=images, max_new_tokens=NEW_TOKENS)
    assert model.last_stats.token_ids == expected
    assert len(expected) >= 5, "degenerate reference: too few tokens to compare"
    assert model.last_stats.image_tokens == sum(model.plan_image(im).num_slots for im in images)


def test_plain_prompt_is_rendered_in_list_form(exported):
    """SmolVLM's template renders only list-form content; a plain prompt (and a system prompt)
    must still reach the model, as the processor renders them in list form."""
    bundle, _, _, processor = exported
    model = mmedge.load(bundle, device="cpu")
    messages = [{"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "user", "content": [{"type": "text", "text": "Hello there"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(text=text, return_tensors="np")["input_ids"][0].tolist()
    plain = model.build_messages("Hello there", 0, system="Be brief.")
    assert model.prompt_ids(plain) == expected
    assert "Hello there" in model.tokenizer.decode(expected)


def test_prompt_ids_and_pixels_match_processor(exported):
    bundle, _, _, processor = exported
    images = [WIDE, TALL]
    messages = _messages("Compare the two pictures.", 2)
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    expected = processor(images=images, text=text, return_tensors="np")
    model = mmedge.load(bundle, device="cpu")
    assert model.prompt_ids(messages, images) == expected["input_ids"][0].tolist()
    np.testing.assert_allclose(model.preprocess(images), expected["pixel_values"][0], atol=1e-6)


def test_kernel_tiles_equal_numpy_path(exported):
    """Every tile goes through the native patch-embedding kernel; it equals the numpy path."""
    from mmedge import kernels
    from mmedge.vision.inputs import patch_embed_numpy

    bundle, _, _, _ = exported
    model = mmedge.load(bundle, device="cpu")
    if not kernels.available():
        pytest.skip("the native extension is not built")
    assert model._vision_input.path == "kernel"
    tokens = model.vision_input([TALL])["patch_tokens"]
    reference = patch_embed_numpy(model.preprocess([TALL]), model._vision_input.weights)
    assert tokens.shape == (9, 1024, 64)
    np.testing.assert_allclose(tokens, reference, atol=1e-4 * float(np.abs(reference).max()))


def test_manifest_records_parity_and_layout(exported):
    _, manifest, _, _ = exported
    parity = manifest["exporter"]["parity"]
    assert parity["with_image"] and parity["greedy_tokens_agreeing"] == parity["greedy_tokens_compared"] > 0
    assert parity["max_logit_diff"] < 1e-3
    image = manifest["image"]
    assert manifest["family"] == "idefics3"
    assert (image["layout"], image["tokens_per_tile"], image["image_size"]) == ("idefics3", 64, [512, 512])
    assert image["size"] == {"longest_edge": 2048} and image["resample"] == 1   # LANCZOS, as shipped


def test_image_features_are_cached_per_image(exported):
    bundle, _, _, _ = exported
    model = mmedge.load(bundle, device="cpu")
    first = model.generate("Describe.", [TALL, WIDE], max_new_tokens=4)
    again = model.generate("Describe.", [WIDE, TALL], max_new_tokens=4, reuse=True)
    assert model.last_stats.cached_images == 2
    assert first and again
    fresh = model.image_features_of(WIDE)
    np.testing.assert_array_equal(fresh, model.image_features.get(model._load_images([WIDE])[1][0]))


def test_fewer_tiles_with_image_longest_edge_match_the_processor(exported):
    """load(image_longest_edge=1024) is the processor's size={"longest_edge": 1024}: a 320x240
    frame takes 2x2 tiles + a global view instead of 3x4 (5 tiles' tokens, not 13)."""
    bundle, _, reference, _ = exported
    variant = "smolvlm2" if "smolvlm2" in str(bundle) else "idefics3"
    processor = smolvlm_processor(FIXTURE, variant, size={"longest_edge": 1024})
    model = mmedge.load(bundle, device="cpu", image_longest_edge=1024)
    messages = _messages("What do you see?", 1)
    expected = transformers_greedy(reference, processor, messages, [WIDE])
    model.generate(messages=messages, images=[WIDE], max_new_tokens=NEW_TOKENS)
    assert model.last_stats.token_ids == expected
    assert model.last_stats.image_tokens == 5 * 64
    for bad in (0, 5000, 1.5, True):
        with pytest.raises(PromptError, match="image_longest_edge"):
            mmedge.load(bundle, device="cpu", image_longest_edge=bad)


# -- bad input ------------------------------------------------------------------------------------
def test_tiles_that_overflow_the_context_say_how_many_tokens(exported):
    bundle, _, _, _ = exported
    model = mmedge.load(bundle, device="cpu")
    big = scene(5, (900, 900))          # 4x4 tiles + global: 17 x 64 image tokens and tags
    with pytest.raises(PromptError) as info:
        model.generate("Describe them all.", [big] * 8, max_new_tokens=4)
    text = str(info.value)
    assert "8192" in text and "8 images, each 900x900 px -> 4x4 tiles + a global view" in text
    assert "image_longest_edge=1024" in text and "fewer images" in text


def test_one_pixel_images_work(exported):
    bundle, _, reference, processor = exported
    model = mmedge.load(bundle, device="cpu")
    for size in [(1, 1), (1, 300), (300, 1)]:
        image = scene(2, size)
        messages = _messages("What?", 1)
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        expected = processor(images=[image], text=text, return_tensors="np")
        assert model.prompt_ids(messages, [image]) == expected["input_ids"][0].tolist(), size
        assert model.generate("What?", [image], max_new_tokens=2)


def test_image_tokens_typed_in_the_prompt_stay_text(exported):
    bundle, _, _, _ = exported
    model = mmedge.load(bundle, device="cpu")
    typed = "Is <image> or <fake_token_around_image><global-img> special?"
    ids = model.prompt_ids(model.build_messages(typed, 1), [WIDE])
    assert ids.count(model.image_spec["image_token_id"]) == model.plan_image(WIDE).num_slots
    assert typed in model.tokenizer.decode(ids, skip_special_tokens=False)
    with pytest.raises(PromptError, match="1 image placeholder"):
        model.generate(messages=model.build_messages(typed, 1), images=[WIDE, TALL], max_new_tokens=2)


def test_count_of_images_is_refused_where_tokens_depend_on_size(exported):
    bundle, _, _, _ = exported
    model = mmedge.load(bundle, device="cpu")
    with pytest.raises(PromptError, match="depends on their size"):
        model.prompt_ids(_messages("x", 1), 1)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_tiny_smolvlm(tmp_path_factory.mktemp("smolvlm-src") / "hf", FIXTURE, seed=2)


@pytest.mark.parametrize("key, value", [("size", {"height": 512, "width": 512}),
                                        ("max_image_size", {"longest_edge": 384}),
                                        ("max_image_size", {"shortest_edge": 512})])
def test_unknown_processor_rule_is_refused_naming_the_key(tiny_folder, tmp_path, key, value):
    folder = tmp_path / "hf"
    shutil.copytree(tiny_folder, folder)
    path = folder / "preprocessor_config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match=key):
        export_model(str(folder), tmp_path / "bundle", parity=False, progress=False)
    assert not (tmp_path / "bundle").exists()


def test_transformers5_layout_exports_the_same_image_entry(tiny_folder, tmp_path):
    """A folder as transformers 5 saves it (image processor only inside processor_config.json)."""
    folder = tmp_path / "hf"
    shutil.copytree(tiny_folder, folder)
    standalone = json.loads((folder / "preprocessor_config.json").read_text())
    (folder / "preprocessor_config.json").unlink()
    nested = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    assert {k: nested[k] for k in ("size", "max_image_size", "resample")} == \
        {k: standalone[k] for k in ("size", "max_image_size", "resample")}
    manifest = export_model(str(folder), tmp_path / "bundle", parity=False, progress=False)
    assert manifest["image"]["size"] == {"longest_edge": standalone["size"]["longest_edge"]}
    assert manifest["image"]["max_image_size"] == standalone["max_image_size"]


# Bounds on max |logit difference| / max |logit| against torch fp32 at the parity prompt (one
# 4x3-tile image), measured on the tiny model, seeds 1-3: fp16 (+ fp16 vision) 0.0005-0.0008,
# int8 (+ int8 vision) 0.008-0.012, int4 (fp32 vision) 0.078-0.106. A margin above the worst seed.
QUANT_BOUNDS = {"fp16": 0.003, "int8": 0.03, "int4": 0.2}
VISION_FOR = {"fp16": "fp16", "int8": "int8", "int4": "fp32"}


@pytest.mark.parametrize("precision", ["fp16", "int8", "int4"])
def test_quantized_decoder_close_to_fp32(tiny_folder, tmp_path, precision):
    manifest = export_model(str(tiny_folder), tmp_path / "bundle", precision=precision,
                            vision_precision=VISION_FOR[precision], progress=False)
    parity = manifest["exporter"]["parity"]
    assert manifest["quantization"] == {**manifest["quantization"], "decoder": precision,
                                        "vision": VISION_FOR[precision]}
    assert parity["max_logit_diff"] / parity["logit_scale"] <= QUANT_BOUNDS[precision], parity
