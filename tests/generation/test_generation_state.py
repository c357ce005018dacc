"""Generation state per call: interleaved streams, threads, abandoned streams, the busy policy,
multi-turn reuse of the KV cache and of image features, and history that outgrows the context.

Every output is compared token for token with the same request run alone on a fresh model that
prefills everything (`reuse=False`). The bundle is a tiny seeded LLaVA (CLIP tower + Llama, the
real SmolLM2 tokenizer and chat template): random weights, but greedy decoding is deterministic,
so any state leaking between generations shows up as different tokens.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import mmedge
from mmedge.errors import BusyError, PromptError
from mmedge.export import export_model
from mmedge.generation.conversation import Conversation
from mmedge.models.tiny import build_tiny_llava

PROMPTS = ["Hello there, who are you?", "Tell me about the sea.", "Count to five.",
           "What is the capital of France?"]
NEW = 12


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("state")
    folder = build_tiny_llava(root / "hf", vision="clip", text="llama", seed=3)
    export_model(str(folder), root / "bundle", precision="fp32", progress=False)
    return root / "bundle"


@pytest.fixture(scope="module")
def int4_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("state4")
    folder = build_tiny_llava(root / "hf", vision="clip", text="llama", seed=3)
    export_model(str(folder), root / "bundle", precision="int4", progress=False, parity=False)
    return root / "bundle"


@pytest.fixture(scope="module")
def alone(bundle):
    return _alone(bundle)


def _alone(bundle):
    """token ids of a request run alone, from scratch."""
    model = mmedge.load(bundle)
    memo = {}

    def run(prompt=None, images=None, messages=None, new=NEW):
        key = repr((prompt, messages, [np.asarray(i).tobytes() for i in images or []], new))
        if key not in memo:
            model.generate(prompt, images, messages=messages, max_new_tokens=new,
                           ignore_eos=True, reuse=False)
            memo[key] = list(model.last_stats.token_ids)
        return memo[key]
    return run


def _frame(value: int) -> np.ndarray:
    rng = np.random.default_rng(value)
    return rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)


def test_interleaved_streams_are_each_right(bundle, alone):
    model = mmedge.load(bundle, parallel=3)
    streams = [model.generate(p, stream=True, max_new_tokens=NEW, ignore_eos=True) for p in PROMPTS[:3]]
    texts = ["", "", ""]
    for _ in range(NEW + 2):                       # round robin, one chunk each
        for i, stream in enumerate(streams):
            texts[i] += next(stream, "")
    for prompt, stream, text in zip(PROMPTS, streams, texts):
        assert stream.stats.token_ids == alone(prompt), prompt
        assert text == model.tokenizer.decode(stream.stats.token_ids)
    assert model.caches.in_use == 0


def test_a_second_stream_in_the_same_thread_is_refused_not_corrupted(bundle, alone):
    model = mmedge.load(bundle)                    # parallel=1
    first = model.generate(PROMPTS[0], stream=True, max_new_tokens=NEW, ignore_eos=True)
    next(first)
    with pytest.raises(BusyError, match=r"at most 1 generation.*close\(\).*parallel=2"):
        model.generate(PROMPTS[1], stream=True)
    with pytest.raises(BusyError):
        model.generate(PROMPTS[1])                 # not streamed: the same rule
    rest = "".join(first)
    assert first.stats.token_ids == alone(PROMPTS[0]) and rest
    # Once the first one ended, the next call runs and is right.
    model.generate(PROMPTS[1], max_new_tokens=NEW, ignore_eos=True)
    assert model.last_stats.token_ids == alone(PROMPTS[1])


def test_an_abandoned_stream_gives_its_cache_back(bundle, alone):
    model = mmedge.load(bundle)
    stream = model.generate(PROMPTS[2], stream=True, max_new_tokens=NEW, ignore_eos=True)
    next(stream), next(stream)
    assert model.caches.in_use == 1
    del stream                                      # dropped halfway: released by the GC
    assert model.caches.in_use == 0
    model.generate(PROMPTS[3], max_new_tokens=NEW, ignore_eos=True)
    assert model.last_stats.token_ids == alone(PROMPTS[3])
    # A stream that was never iterated holds its cache too, and close() gives it back.
    never = model.generate(PROMPTS[0], stream=True, max_new_tokens=NEW)
    assert model.caches.in_use == 1
    never.close()
    assert model.caches.in_use == 0 and list(never) == []
    with model.generate(PROMPTS[0], stream=True, max_new_tokens=NEW, ignore_eos=True) as s:
        next(s)
    assert model.caches.in_use == 0
    model.generate(PROMPTS[0], max_new_tokens=NEW, ignore_eos=True)   # reuses the abandoned prefix
    assert model.last_stats.reused_tokens > 0
    assert model.last_stats.token_ids == alone(PROMPTS[0])


@pytest.mark.parametrize("parallel", [1, 2])
def test_threads_each_get_their_own_answer(bundle, alone, parallel):
    model = mmedge.load(bundle, parallel=parallel)
    image = _frame(1)
    jobs = [(p, [image] if i % 2 else None) for i, p in enumerate(PROMPTS)] * 2
    results: dict[int, list[int]] = {}
    errors: list[BaseException] = []

    def work(index, prompt, images):
        try:
            stream = model.generate(prompt, images, stream=True, max_new_tokens=NEW, ignore_eos=True)
            "".join(stream)
            results[index] = stream.stats.token_ids
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i, p, im)) for i, (p, im) in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    for i, (prompt, images) in enumerate(jobs):
        assert results[i] == alone(prompt, images), (i, prompt)
    assert model.caches.in_use == 0


def test_a_busy_model_makes_other_threads_wait_then_gives_up_after_queue_timeout(bundle):
    model = mmedge.load(bundle, queue_timeout=0.3)
    held = model.generate(PROMPTS[0], stream=True, max_new_tokens=NEW)
    caught = []
    t = threading.Thread(target=lambda: caught.append(pytest.raises(BusyError, model.generate, "hi")))
    t.start(), t.join(timeout=30)
    assert caught and "stayed busy for 0.3 s" in str(caught[0].value)
    held.close()
    assert model.generate("hi", max_new_tokens=2)  # free again


def test_parallel_must_be_positive(bundle):
    with pytest.raises(mmedge.MMEdgeError, match="parallel"):
        mmedge.load(bundle, parallel=0)


# -- multi-turn -----------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_the_next_turn_prefills_only_what_is_new(precision, request):
    # int4: MatMulNBits computes one row differently from several, which is why decode-step
    # positions are never reused (decoder_session.DECODED); the answers must still be identical.
    bundle = request.getfixturevalue("bundle" if precision == "fp32" else "int4_bundle")
    alone = _alone(bundle)
    model = mmedge.load(bundle)
    image = _frame(2)
    turn1 = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}]
    answer = model.generate(messages=turn1, images=[image], max_new_tokens=NEW, ignore_eos=True)
    first = model.last_stats
    assert first.reused_tokens == 0 and first.cached_images == 0 and first.encode_ms > 0
    assert first.token_ids == alone(messages=turn1, images=[image])

    turn2 = turn1 + [{"role": "assistant", "content": answer},
                     {"role": "user", "content": "And what colour?"}]
    model.generate(messages=turn2, images=[image], max_new_tokens=NEW, ignore_eos=True)
    second = model.last_stats
    # The first turn's prompt (image included) came from the cache; its answer and the new
    # question were prefilled.
    assert second.reused_tokens == first.prompt_tokens
    assert second.encode_ms == 0
    assert second.token_ids == alone(messages=turn2, images=[image])

    # A new image in the third turn is encoded; the first one is not (it lies in the prefix).
    other = _frame(3)
    turn3 = turn2 + [{"role": "assistant", "content": model.tokenizer.decode(second.token_ids)},
                     {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "This one?"}]}]
    model.generate(messages=turn3, images=[image, other], max_new_tokens=NEW, ignore_eos=True)
    third = model.last_stats
    assert third.reused_tokens >= second.prompt_tokens and third.encode_ms > 0
    assert third.token_ids == alone(messages=turn3, images=[image, other])


def test_a_repeated_image_skips_the_vision_graph(bundle, alone):
    model = mmedge.load(bundle)
    image = _frame(4)
    model.generate("Describe it.", image, max_new_tokens=NEW, ignore_eos=True)
    # A different question first (so the KV prefix ends before the image), same image.
    model.generate(messages=[{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]}],
                   images=[image.copy()], max_new_tokens=NEW, ignore_eos=True)
    stats = model.last_stats
    assert stats.cached_images == 1 and stats.encode_ms == 0 and stats.reused_tokens < 5
    assert stats.token_ids == alone(messages=[{"role": "system", "content": "Be brief."},
                                              {"role": "user", "content": [{"type": "image"},
                                                                           {"type": "text", "text": "Colour?"}]}],
                                    images=[image])
    # A changed pixel is another image.
    changed = image.copy()
    changed[0, 0, 0] ^= 1
    model.generate("Describe it.", changed, max_new_tokens=NEW, ignore_eos=True)
    assert model.last_stats.cached_images == 0 and model.last_stats.encode_ms > 0


def test_one_image_need_not_be_a_list(bundle, tmp_path, alone):
    from PIL import Image

    path = tmp_path / "scene.png"
    Image.fromarray(_frame(5)).save(path)
    model = mmedge.load(bundle)
    model.generate("What is it?", str(path), max_new_tokens=NEW, ignore_eos=True)
    assert model.last_stats.token_ids == alone("What is it?", [_frame(5)])
    with pytest.raises(PromptError, match="list of them, not int"):
        model.generate("What is it?", 3)


def test_history_beyond_the_context_drops_the_oldest_turns(bundle):
    model = mmedge.load(bundle)
    conversation = Conversation(system="You are terse.")
    long_text = " ".join(["word"] * (model.context_length // 6))
    dropped_total = 0
    for turn in range(8):
        conversation.add_user(f"Turn {turn}: {long_text}")
        dropped_total += conversation.fit(model, max_new_tokens=8)
        answer = model.generate(messages=conversation.all_messages(), max_new_tokens=8)
        conversation.add_assistant(answer)
    assert dropped_total > 0                                     # it did outgrow the context
    assert conversation.all_messages()[0] == {"role": "system", "content": "You are terse."}
    assert conversation.messages[0]["role"] == "user"            # whole turns were dropped
    assert "Turn 7" in conversation.messages[-2]["content"]      # the newest turn is there
    conversation.add_user(" ".join(["word"] * model.context_length))
    with pytest.raises(PromptError, match="too long for the model's context"):
        conversation.fit(model, max_new_tokens=8)


@pytest.mark.parametrize("precision", ["fp32", "int4"])
def test_a_warm_prefix_gives_the_logits_of_a_full_prefill_exactly(precision, request):
    """Bit for bit, not only the same argmax: a conversation's next turn continues a cache that
    one-token decode steps wrote, and MatMulNBits computes one row differently from several."""
    bundle = request.getfixturevalue("bundle" if precision == "fp32" else "int4_bundle")
    model = mmedge.load(bundle)
    turn1 = [{"role": "user", "content": "Tell me about the sea."}]
    answer = model.generate(messages=turn1, max_new_tokens=NEW, ignore_eos=True)
    for follow_up in ("And the sky?", "x"):
        turn2 = turn1 + [{"role": "assistant", "content": answer}, {"role": "user", "content": follow_up}]
        ids = model.prompt_ids(turn2, 0)
        cache, reused = model.caches.acquire(ids, len(ids) + 1)
        try:
            assert 0 < reused <= len(ids) - 2
            warm = cache.forward(model.prompt_embeddings(ids[reused:], None), ids[reused:])
        finally:
            model.caches.release(cache)
        assert np.array_equal(warm, model.prompt_logits(ids)), follow_up
    # The same prompt again: everything but the last two positions comes from the cache.
    cache, reused = model.caches.acquire(ids, len(ids) + 1)
    try:
        assert reused == len(ids) - 2
        warm = cache.forward(model.prompt_embeddings(ids[reused:], None), ids[reused:])
    finally:
        model.caches.release(cache)
    assert np.array_equal(warm, model.prompt_logits(ids))
