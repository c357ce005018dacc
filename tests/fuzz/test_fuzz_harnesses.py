"""The fuzz harnesses in plain pytest (no atheris): each one's seeds, and every input a fuzz run
found (`scripts/fuzz.sh`), go through its `one_input` and may raise only mmedge's own errors. The
inputs found are also regular tests where the fix lives (tests/vision/test_untrusted_images.py,
tests/test_bundle_and_errors.py, tests/clip/test_clip.py); here they pin the harness's view."""

from __future__ import annotations

import base64
import json

import pytest

import _harness
import fuzz_chat_template
import fuzz_image

# Inputs fuzz runs found, by harness (base64 of the whole fuzz input, harness bytes included).
FOUND = {
    "image": [
        # A TIFF whose StripOffsets tag is a DOUBLE: TypeError from Pillow escaped load_image.
        "AAFJSSoACAAAAAoAAAEEAAEAAAAEAAAAAQEEAAEAAAACAAAAAgEDAAQAAACGAAAAAwEAAwEAACQBAAAABgEDAAEAAAAF"
        "AAAAEQEMAAEAAACOAAAAFQEDAAEAAAAEAAAAFgEEAAEAAAACAAAAFwEEAAEAAAAgAAAAHAEDAAEAAAABAAAAAACAAAgA"
        "CAAIAAgAgkeCAP4U1gCKXYEAJc28AAr/EwBySfgALJQRAPDhYwA=",
    ],
    "manifest": [
        # Structured edits of the tiny LLaVA's manifest giving patch_embedding.num_tokens a list:
        # TypeError from int() in the patch-embedding loader.
        "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWl"
        "paWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaUDAQMBBRQDAgX7"
        "EwLy////AAAAAAM=",
        # components.decoder.file -> vision.onnx, then the full load: KeyError 'inputs_embeds'.
        "/wQpAg==",
    ],
    "chat_template": [
        # A message whose content is a list, into SmolLM2's `+`: see test_known_open_* below.
        "JAEEAwMCAaAn",
    ],
}


def _run(module, data: bytes) -> None:
    _harness.guarded(module.one_input)(data)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz-work")


@pytest.mark.parametrize("module", [fuzz_image, fuzz_chat_template], ids=["image", "chat_template"])
def test_seeds_and_found_inputs_raise_only_mmedge_errors(module, work):
    module.setup(work)
    name = module.__name__.removeprefix("fuzz_")
    inputs = module.seeds() + [base64.b64decode(x) for x in FOUND.get(name, [])]
    assert len(inputs) >= 5
    for data in inputs:
        _run(module, data)


def test_image_seeds_reach_the_preprocessors():
    """The seeds are real images: most decode and preprocess, so fuzzing starts past the decoder."""
    from mmedge.errors import MMEdgeError

    decoded = 0
    for data in fuzz_image.seeds():
        try:
            fuzz_image.one_input(data)
            decoded += 1
        except MMEdgeError:
            pass
    assert decoded >= 12


def test_harness_flags_a_foreign_exception():
    """What makes a finding: anything but MMEdgeError escapes `guarded`."""
    from mmedge.errors import BundleError

    def raises(exc):
        def one_input(data):
            raise exc
        return one_input

    _harness.guarded(raises(BundleError("fine")))(b"")
    with pytest.raises(KeyError):
        _harness.guarded(raises(KeyError("x")))(b"")


def test_a_python_error_inside_a_template_is_a_prompt_error():
    # The fuzzer's first finding: SmolLM2's template concatenating a list content was a bare
    # TypeError out of ChatTemplate.render.
    from mmedge.errors import PromptError
    from mmedge.text import ChatTemplate

    template = ChatTemplate(fuzz_chat_template.SMOLLM2, fuzz_chat_template.SPECIAL)
    with pytest.raises(PromptError):
        template.render([{"role": "user", "content": [{"type": "text", "text": "hi"}]}])


def test_json_value_decodes_every_input():
    for data in (b"", b"\x00", bytes(range(256)), b"\xff" * 300):
        json.dumps(_harness.json_value(_harness.Bytes(data)), allow_nan=True)


# -- the harnesses that need bundles (an export each: torch) --------------------------------------
@pytest.fixture(scope="module")
def bundle_harnesses(work):
    pytest.importorskip("torch")
    import fuzz_index
    import fuzz_manifest

    fuzz_manifest.setup(work)
    fuzz_index.setup(work)
    return fuzz_manifest, fuzz_index


def test_manifest_and_index_seeds_raise_only_mmedge_errors(bundle_harnesses):
    for module in bundle_harnesses:
        name = module.__name__.removeprefix("fuzz_")
        for data in module.seeds() + [base64.b64decode(x) for x in FOUND.get(name, [])]:
            _run(module, data)


def test_the_real_manifest_and_index_open(bundle_harnesses):
    """The first seed of each is the real thing: it must open (else the harness fuzzes nothing)."""
    fuzz_manifest, fuzz_index = bundle_harnesses
    fuzz_manifest.one_input(fuzz_manifest.seeds()[0])
    fuzz_index.one_input(fuzz_index.seeds()[0])
