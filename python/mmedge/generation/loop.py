"""The generation loop: prompt embeddings in, streamed text out.

One sequence per call, in a KV cache the call owns: prefill what the cache does not already hold
of the prompt in one decoder call, then one call per new token. Stops at an end-of-sequence token,
a stop string, `max_new_tokens`, or the context length. Timings of each stage are recorded in
`GenerationStats` (read by `mmedge bench`).

What lives elsewhere: building the prompt (mmedge.generation.model), the KV cache
(mmedge.generation.decoder_session), sampling rules (mmedge.generation.sampling),
detokenization (mmedge.text).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np

from mmedge.generation.decoder_session import DECODED, KVCache
from mmedge.generation.sampling import Sampler
from mmedge.text import StopStrings, Tokenizer, streaming_detokenizer


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0        # 0 = greedy
    top_k: int = 0                  # 0 = off
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: Sequence[str] = ()        # stop strings, in addition to the model's end tokens
    ignore_eos: bool = False        # benchmarks: always generate max_new_tokens


@dataclass
class GenerationStats:
    prompt_tokens: int = 0
    image_tokens: int = 0
    new_tokens: int = 0
    preprocess_ms: float = 0.0      # image decode + preprocessing + patch embedding (one kernel)
    encode_ms: float = 0.0          # vision tower (after the patch embedding) + projector
    prefill_ms: float = 0.0         # embedding + first decoder call + first sampling
    decode_ms: float = 0.0          # every later decoder call and sampling
    ttft_ms: float = 0.0            # from the call to the first token (includes the stages above)
    reused_tokens: int = 0          # leading prompt positions the KV cache already held (not prefilled)
    cached_images: int = 0          # images whose features came from the image cache
    finish_reason: str = ""         # "stop", "length" or "context"
    token_ids: list[int] = field(default_factory=list)

    @property
    def prefill_tok_s(self) -> float:
        prefilled = self.prompt_tokens - self.reused_tokens
        return prefilled / (self.prefill_ms / 1e3) if self.prefill_ms else 0.0

    @property
    def decode_tok_s(self) -> float:
        steps = self.new_tokens - 1
        return steps / (self.decode_ms / 1e3) if steps > 0 and self.decode_ms else 0.0


def make_sampler(config: GenerationConfig) -> Sampler:
    """The sampler for `config`; raises MMEdgeError on invalid settings."""
    return Sampler(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
                   repetition_penalty=config.repetition_penalty, seed=config.seed)


def generate_tokens(cache: KVCache, embed: Callable[[np.ndarray], np.ndarray],
                    prompt_ids: Sequence[int], new_embeds: np.ndarray, new_keys: Sequence,
                    tokenizer: Tokenizer, config: GenerationConfig, sampler: Sampler,
                    context_length: int, stats: GenerationStats,
                    started: float, prompt_inputs: dict[str, np.ndarray] | None = None) -> Iterator[str]:
    """Yield text chunks as they are decoded. The cache already holds the prompt's first
    `cache.length` positions; `new_embeds` [seq, hidden] (image features written in) and
    `new_keys` are the rest of it, with `prompt_inputs` for it where the decoder takes more
    (M-RoPE positions, DeepStack features; see KVCache.forward). `embed` maps new token ids [n]
    to embeddings [n, hidden]."""
    room = context_length - len(prompt_ids)
    max_new = min(config.max_new_tokens, room)
    detok = streaming_detokenizer(tokenizer)
    stops = StopStrings(config.stop)
    eos = set() if config.ignore_eos else set(tokenizer.eos_token_ids)
    history = list(prompt_ids)

    stats.prompt_tokens = len(prompt_ids)
    stats.reused_tokens = cache.length
    stats.finish_reason = "length" if max_new == config.max_new_tokens else "context"
    hit_stop_string = False
    t0 = t_decode = time.perf_counter()
    logits = cache.forward(new_embeds, new_keys, **(prompt_inputs or {}))
    for step in range(max_new):
        token = sampler(logits, history)
        if step == 0:
            t_decode = time.perf_counter()
            stats.prefill_ms = (t_decode - t0) * 1e3
            stats.ttft_ms = (t_decode - started) * 1e3
        if token in eos:
            stats.finish_reason = "stop"
            break
        history.append(token)
        stats.token_ids.append(token)
        stats.new_tokens += 1
        text, hit_stop_string = stops.feed(detok.push(token))
        if text:
            yield text
        if hit_stop_string:
            stats.finish_reason = "stop"
            break
        if step + 1 < max_new:
            # Keyed apart from prompt positions: see decoder_session.DECODED.
            logits = cache.forward(embed(np.array([token], dtype=np.int64)), ((DECODED, token),))
    stats.decode_ms = (time.perf_counter() - t_decode) * 1e3
    if not hit_stop_string:
        tail = stops.flush(detok.flush())
        if tail:
            yield tail


class Generation(Iterator[str]):
    """One call's answer as it is generated: iterate for text chunks (what `generate(...,
    stream=True)` returns). It owns the call's KV cache until it ends: exhausted, `close()`d,
    left by a `with` block, or garbage-collected (an abandoned stream gives its cache back).
    `stats` are this call's own figures."""

    def __init__(self, chunks: Iterator[str], stats: GenerationStats, release: Callable[[], None]):
        self._chunks, self.stats, self._release = chunks, stats, release

    def __iter__(self) -> Generation:
        return self

    def __next__(self) -> str:
        try:
            return next(self._chunks)
        except BaseException:
            self.close()
            raise

    def text(self) -> str:
        """The rest of the answer, joined."""
        return "".join(self)

    def close(self) -> None:
        """Stop generating and give the KV cache back (kept warm for a prompt that continues it)."""
        release, self._release = self._release, None
        if release is not None:
            try:
                self._chunks.close()
            finally:
                release()

    def __enter__(self) -> Generation:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # at interpreter exit the cache's modules may already be gone
            pass
