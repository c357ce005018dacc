"""Next-token choice from a logits vector: repetition penalty, temperature, top-k, top-p, then
greedy or seeded sampling, in numpy.

The rules and their order are those of transformers' `generate` (generation/utils.py,
`_get_logits_processor`), with each step defined as its logits processor is
(generation/logits_process.py):

1. RepetitionPenaltyLogitsProcessor, when repetition_penalty != 1: for every distinct id seen so far
   (the prompt, image placeholders included, and the generated ids), a logit < 0 is multiplied by
   the penalty, any other is divided by it. Applied in greedy decoding too.
2. TemperatureLogitsWarper, when sampling and temperature != 1: logits / temperature.
3. TopKLogitsWarper, when sampling and top_k != 0: drop logits below the k-th largest (ties kept).
4. TopPLogitsWarper, when sampling and top_p < 1: sort ascending, drop the tokens whose cumulative
   softmax probability is <= 1 - top_p, always keeping the most likely one.

Unlike transformers, temperature == 0 means greedy, and top_k defaults to 0 (off) rather than 50.
The generation loop lives in mmedge.generation.loop; this module only chooses one token.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mmedge.errors import MMEdgeError

__all__ = ["Sampler"]


class Sampler:
    """Chooses the next token id from logits [vocab].

    Greedy (argmax after the repetition penalty) when `do_sample` is False or `temperature` is 0;
    otherwise samples from the processed distribution with a `numpy.random.Generator` seeded by
    `seed` (None: fresh entropy), so a given seed reproduces a given sequence of choices.
    """

    def __init__(self, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 repetition_penalty: float = 1.0, do_sample: bool = True, seed: int | None = None):
        _check(isinstance(temperature, (int, float)) and not isinstance(temperature, bool)
               and temperature >= 0, f"temperature must be a number >= 0 (0 = greedy), got {temperature!r}.")
        _check(isinstance(top_k, (int, np.integer)) and not isinstance(top_k, bool) and top_k >= 0,
               f"top_k must be an integer >= 0 (0 = off), got {top_k!r}.")
        _check(isinstance(top_p, (int, float)) and not isinstance(top_p, bool) and 0 < top_p <= 1,
               f"top_p must be in (0, 1] (1 = off), got {top_p!r}.")
        _check(isinstance(repetition_penalty, (int, float)) and not isinstance(repetition_penalty, bool)
               and repetition_penalty > 0,
               f"repetition_penalty must be a number > 0 (1 = off), got {repetition_penalty!r}.")
        _check(seed is None or (isinstance(seed, (int, np.integer)) and not isinstance(seed, bool) and seed >= 0),
               f"seed must be an integer >= 0 or None, got {seed!r}.")
        self.temperature = float(temperature)
        self.top_k = int(top_k)
        self.top_p = float(top_p)
        self.repetition_penalty = float(repetition_penalty)
        self.greedy = not do_sample or self.temperature == 0.0
        self._rng = np.random.default_rng(seed)

    def process(self, logits: np.ndarray, previous_ids: Sequence[int] = ()) -> np.ndarray:
        """The logits the choice is made from: float32 [vocab], -inf for removed tokens."""
        scores = np.array(logits, dtype=np.float32)  # a copy: the caller's logits stay as they are
        if scores.ndim != 1:
            raise ValueError(f"logits must be 1-D [vocab], got shape {scores.shape}")
        vocab = scores.shape[0]
        if self.repetition_penalty != 1.0 and len(previous_ids):
            ids = np.unique(np.asarray(previous_ids, dtype=np.int64))
            ids = ids[(ids >= 0) & (ids < vocab)]  # ids the logits do not cover get no penalty, as in HF
            seen = scores[ids]
            penalty = np.float32(self.repetition_penalty)
            scores[ids] = np.where(seen < 0, seen * penalty, seen / penalty)
        if self.greedy:
            return scores
        if self.temperature != 1.0:
            scores = scores / np.float32(self.temperature)
        if self.top_k != 0:
            k = min(self.top_k, vocab)
            kth_largest = np.partition(scores, vocab - k)[vocab - k]
            scores[scores < kth_largest] = -np.inf
        if self.top_p < 1.0:
            ranked = np.sort(scores)  # ascending, as transformers sorts; values only (argsort is slow)
            probs = np.exp(ranked - ranked[-1])
            probs /= probs.sum(dtype=np.float32)
            cumulative = np.cumsum(probs, dtype=np.float32)  # nondecreasing: the dropped tokens are a prefix
            n_drop = min(int(np.count_nonzero(cumulative <= np.float32(1.0 - self.top_p))), vocab - 1)
            if n_drop:  # keep >= 1 token (min_tokens_to_keep); ties at the cut are all kept
                scores[scores < ranked[n_drop]] = -np.inf
        return scores

    def __call__(self, logits: np.ndarray, previous_ids: Sequence[int] = ()) -> int:
        """The next token id. `previous_ids`: the prompt ids and the ids generated so far."""
        scores = self.process(logits, previous_ids)
        if self.greedy:
            return int(np.argmax(scores))
        candidates = np.flatnonzero(scores > -np.inf)
        weights = np.exp(scores[candidates].astype(np.float64) - scores[candidates].max())
        cdf = np.cumsum(weights)
        pick = int(np.searchsorted(cdf, self._rng.random() * cdf[-1], side="right"))
        return int(candidates[min(pick, len(candidates) - 1)])


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise MMEdgeError(f"Bad sampling setting: {message}")
