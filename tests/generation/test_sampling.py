"""mmedge.sampling against transformers' logits processors and `generate`.

The reference processors come from transformers' own `_get_logits_processor` (the list and order
`generate` uses), built on a tiny random Llama, so both the definitions and the order are checked.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmedge.errors import MMEdgeError
from mmedge.generation.sampling import Sampler

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 512


@pytest.fixture(scope="module")
def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    with torch.no_grad():  # a larger logit scale than the random init gives, so the warpers have work to do
        model.lm_head.weight.mul_(40)
    return model


def hf_processors(model, input_ids: torch.Tensor, **settings):
    """The processor list transformers' `generate` builds for these settings."""
    config = transformers.GenerationConfig(**settings)
    return model._get_logits_processor(
        generation_config=config, input_ids_seq_length=input_ids.shape[1], encoder_input_ids=input_ids,
        prefix_allowed_tokens_fn=None, logits_processor=transformers.LogitsProcessorList(), device="cpu",
        model_kwargs={"attention_mask": torch.ones_like(input_ids)})


def _log_probs(scores: np.ndarray) -> np.ndarray:
    s = scores.astype(np.float64)
    return s - (np.log(np.sum(np.exp(s - s.max()))) + s.max())


def assert_same_distribution(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Same removed tokens and the same float32 logits (bit for bit) for the kept ones."""
    assert ours.dtype == np.float32 and ours.shape == theirs.shape
    np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(theirs))
    kept = ~np.isneginf(theirs)
    np.testing.assert_array_equal(ours[kept], theirs[kept])
    np.testing.assert_allclose(_log_probs(ours)[kept], _log_probs(theirs)[kept], rtol=0, atol=1e-5)


SETTINGS = [
    dict(temperature=1.0, top_k=0, top_p=1.0, repetition_penalty=1.0),
    dict(temperature=0.7, top_k=0, top_p=1.0, repetition_penalty=1.0),
    dict(temperature=1.5, top_k=40, top_p=1.0, repetition_penalty=1.0),
    dict(temperature=1.0, top_k=0, top_p=0.9, repetition_penalty=1.0),
    dict(temperature=0.6, top_k=50, top_p=0.95, repetition_penalty=1.3),
    dict(temperature=1.2, top_k=1, top_p=0.5, repetition_penalty=0.8),
    dict(temperature=0.9, top_k=700, top_p=0.05, repetition_penalty=1.1),
    dict(temperature=2.0, top_k=5, top_p=0.999, repetition_penalty=2.0),
]


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: "-".join(f"{k[:4]}{v}" for k, v in s.items()))
def test_process_matches_transformers_on_random_logits(tiny_llama, settings):
    rng = np.random.default_rng(0)
    for trial in range(20):
        logits = (rng.standard_normal(VOCAB) * rng.uniform(0.5, 8)).astype(np.float32)
        previous = rng.integers(0, VOCAB, size=rng.integers(1, 60)).tolist()  # prompt + generated, repeats included
        input_ids = torch.tensor([previous])
        theirs = hf_processors(tiny_llama, input_ids, do_sample=True, **settings)(
            input_ids, torch.from_numpy(logits.copy())[None])[0].numpy()
        ours = Sampler(**settings).process(logits, previous)
        assert_same_distribution(ours, theirs)


@pytest.mark.parametrize("penalty", [1.0, 1.4, 0.7])
def test_greedy_matches_transformers_generate(tiny_llama, penalty):
    """Greedy decoding (do_sample=False) applies only the repetition penalty, over prompt + generated ids."""
    prompt = torch.tensor([[5, 17, 17, 200, 3, 5, 99]])
    out = tiny_llama.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False,
                              repetition_penalty=penalty, max_new_tokens=12, output_logits=True,
                              output_scores=True, return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    ids = out.sequences[0].tolist()
    sampler = Sampler(temperature=0.0, repetition_penalty=penalty)
    not_sampling = Sampler(temperature=0.7, top_k=3, do_sample=False, repetition_penalty=penalty)
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        history = ids[: prompt.shape[1] + step]
        raw = raw[0].numpy()
        assert_same_distribution(sampler.process(raw, history), processed[0].numpy())
        assert sampler(raw, history) == ids[len(history)] == not_sampling(raw, history)


def test_sampling_matches_transformers_generate(tiny_llama):
    """The scores `generate` samples from (output_scores) equal `Sampler.process` of its raw logits."""
    settings = dict(temperature=0.8, top_k=30, top_p=0.9, repetition_penalty=1.2)
    prompt = torch.tensor([[1, 2, 3, 2, 1, 400]])
    torch.manual_seed(1)
    out = tiny_llama.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, **settings,
                              max_new_tokens=10, output_logits=True, output_scores=True,
                              return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    ids = out.sequences[0].tolist()
    sampler = Sampler(**settings, seed=0)
    for step, (raw, processed) in enumerate(zip(out.logits, out.scores)):
        history = ids[: prompt.shape[1] + step]
        ours = sampler.process(raw[0].numpy(), history)
        assert_same_distribution(ours, processed[0].numpy())
        assert np.isfinite(ours[ids[len(history)]])  # transformers' pick is one we could have made


def test_greedy_is_argmax():
    rng = np.random.default_rng(3)
    for _ in range(20):
        logits = rng.standard_normal(1000).astype(np.float32)
        assert Sampler(temperature=0)(logits, []) == int(np.argmax(logits))
        assert Sampler(temperature=1.3, top_p=0.5, do_sample=False)(logits, [1, 2]) == int(np.argmax(logits))
    # The repetition penalty still applies: the argmax is pushed down below the runner-up.
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert Sampler(temperature=0, repetition_penalty=1.5)(logits, [1]) == 2


def test_process_leaves_the_callers_logits_alone():
    logits = np.array([1.0, -2.0, 3.0], dtype=np.float32)
    Sampler(temperature=0.5, top_k=1, repetition_penalty=2.0).process(logits, [0, 1])
    np.testing.assert_array_equal(logits, [1.0, -2.0, 3.0])


def test_seeded_sampling_is_reproducible():
    rng = np.random.default_rng(4)
    logits = [rng.standard_normal(300).astype(np.float32) for _ in range(50)]
    settings = dict(temperature=1.1, top_k=40, top_p=0.95, repetition_penalty=1.1)

    def draw(seed):
        sampler, history = Sampler(**settings, seed=seed), [1, 2, 3]
        for step_logits in logits:
            history.append(sampler(step_logits, history))
        return history

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_samples_only_kept_tokens_with_their_probabilities():
    logits = np.log(np.array([0.5, 0.3, 0.15, 0.04, 0.01], dtype=np.float32))
    sampler = Sampler(top_p=0.75, seed=0)  # keeps 0.5 and 0.3: the rest hold 0.2 <= 1 - 0.75
    counts = np.bincount([sampler(logits, []) for _ in range(20000)], minlength=5)
    assert counts[2:].sum() == 0
    assert abs(counts[0] / 20000 - 0.5 / 0.8) < 0.02
    sampler = Sampler(seed=2)
    counts = np.bincount([sampler(logits, []) for _ in range(20000)], minlength=5) / 20000
    np.testing.assert_allclose(counts, [0.5, 0.3, 0.15, 0.04, 0.01], atol=0.015)


def test_repetition_penalty_ignores_ids_outside_the_logits():
    logits = np.array([1.0, -1.0, 2.0], dtype=np.float32)
    out = Sampler(temperature=0, repetition_penalty=2.0).process(logits, [1, 1, 7, -1])
    np.testing.assert_array_equal(out, [1.0, -2.0, 2.0])


@pytest.mark.parametrize("bad", [
    dict(temperature=-0.1), dict(temperature="hot"), dict(top_k=-1), dict(top_k=2.5), dict(top_p=0.0),
    dict(top_p=1.01), dict(top_p=-0.5), dict(repetition_penalty=0.0), dict(repetition_penalty=-1.0),
    dict(seed=-3), dict(seed=1.5),
])
def test_bad_settings_are_rejected(bad):
    name = next(iter(bad))
    with pytest.raises(MMEdgeError, match=name):
        Sampler(**bad)
