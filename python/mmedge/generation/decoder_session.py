"""The decoder's ONNX Runtime session, and the KV caches that hold each generation's state.

The decoder graph (GroupQueryAttention, built at export) takes `inputs_embeds`, `attention_mask`
and `past_key_values.{i}.key/value`, and returns last-position `logits` and `present.*`. Its
attention reads and writes the cache in place when past and present are the same buffer, so a
cache is allocated once at the length a generation needs and bound as both input and output: no
per-token allocation and no per-token copy of the cache (IO binding).

State lives in `KVCache`, never in the session: each generation owns one cache (its buffers, its
IO binding, its length and the keys of the tokens in it), so generations cannot see each other's
state. `CachePool` hands caches out, up to `parallel` at once, and takes them back warm: a later
generation whose prompt starts with the same tokens (the next turn of a conversation) continues
from the longest common prefix instead of prefilling it again.

What lives elsewhere: sampling (mmedge.generation.sampling), the generation loop
(mmedge.generation.loop).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import onnxruntime as ort

from mmedge.backend import Device
from mmedge.errors import BundleError, BusyError, MMEdgeError

_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16}

# Caches grow in steps of this many positions, so a conversation's turns reuse one allocation.
_GROWTH = 256

# What a reused prefix may hold, so that reuse is exact: ONNX Runtime's MatMulNBits (int8/int4)
# takes another kernel for a single row than for several, and a one-token step's keys and values
# differ from a prefill's (measured on SmolLM2 int4: last-position logits 0.7 apart when the last
# token is fed alone, 0.85 when ten positions came from one-token steps; bit-identical for every
# chunk of 2 or more rows; fp32: 3e-5 and 0). So positions written by decode steps are keyed
# apart (a prompt never matches them: the answer is prefilled again as part of the next turn),
# and a reuse always feeds at least MIN_FEED positions. Then a warm prefix gives exactly the
# logits a full prefill gives, at every precision.
DECODED = "decoded"
MIN_FEED = 2


class DecoderSession:
    """The decoder graph and what it needs to know about its inputs; holds no sequence state."""

    def __init__(self, session: ort.InferenceSession, spec: dict[str, Any], device: Device,
                 target: str = "cpu"):
        self.session = session
        self.num_layers = spec["num_layers"]
        self.num_kv_heads = spec["num_kv_heads"]
        self.head_dim = spec["head_dim"]
        inputs = {i.name: i for i in session.get_inputs()}
        for name in ("inputs_embeds", "past_key_values.0.key"):
            if name not in inputs:
                raise BundleError(f"The decoder graph has no input {name!r}; it was not written by "
                                  "`mmedge export`. Re-export the bundle.")
            if inputs[name].type not in _ORT_TO_NUMPY:
                raise BundleError(f"The decoder graph's input {name!r} is {inputs[name].type}; "
                                  "mmedge runs float32 and float16 decoders. Re-export with "
                                  "--quant fp32, fp16, int8 or int4.")
        self.embeds_dtype = _ORT_TO_NUMPY[inputs["inputs_embeds"].type]
        self.kv_dtype = _ORT_TO_NUMPY[inputs["past_key_values.0.key"].type]
        self.has_position_ids = "position_ids" in inputs
        # M-RoPE (Qwen-VL): position ids [3, batch, seq], given by the caller for a prompt
        self.mrope = self.has_position_ids and len(inputs["position_ids"].shape) == 3
        # Qwen3-VL's DeepStack: features added after the first decoder layers (export/deepstack.py)
        self.deepstack_layers = int(inputs["deepstack_embeds"].shape[0]) \
            if "deepstack_embeds" in inputs else 0
        self.hidden_size = inputs["inputs_embeds"].shape[-1]
        self.past_names = [f"past_key_values.{i}.{kv}"
                           for i in range(self.num_layers) for kv in ("key", "value")]
        # The cache lives where the attention op runs: a graph built for the CPU (fp32/int8/int4)
        # keeps GroupQueryAttention on the CPU even under the CUDA provider (its CUDA kernel is
        # fp16/bf16 only), so only a CUDA-target graph gets a cache in GPU memory.
        self.ort_device = "cuda" if device.name == "cuda" and target == "cuda" else "cpu"

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(self, capacity)


class KVCache:
    """One sequence's keys and values, its position, and the keys of the tokens it holds.

    `keys[i]` identifies what was fed at position i (a token id, an image's content hash and
    the index of its feature for image positions, or (DECODED, id) for a decode step), so a later
    prompt can tell how much of the cache it shares (`common_prefix`).
    """

    def __init__(self, decoder: DecoderSession, capacity: int):
        self.decoder = decoder
        self.length = 0                      # positions filled
        self.keys: list[Hashable] = []       # what each filled position holds
        # M-RoPE: the next text position is length + rope_delta (images advance positions by
        # less than their token count; transformers' rope_deltas)
        self.rope_delta = 0
        self._arrays: list[np.ndarray] = []  # the CPU buffers behind the OrtValues
        self._allocate(capacity)

    def _allocate(self, capacity: int) -> None:
        d = self.decoder
        shape = (1, d.num_kv_heads, capacity, d.head_dim)
        if d.ort_device == "cpu":
            # numpy owns the memory (so a cache can grow by copying its prefix); the OrtValues
            # are views of it.
            old, self._arrays = self._arrays, [np.zeros(shape, d.kv_dtype) for _ in d.past_names]
            for new_array, old_array in zip(self._arrays, old):
                new_array[:, :, :self.length] = old_array[:, :, :self.length]
            values = [ort.OrtValue.ortvalue_from_numpy(a) for a in self._arrays]
        else:
            values = [ort.OrtValue.ortvalue_from_shape_and_type(shape, d.kv_dtype, "cuda", 0)
                      for _ in d.past_names]
            self.truncate(0)  # a device cache cannot carry its prefix over (yet)
        binding = d.session.io_binding()
        for name, value in zip(d.past_names, values):
            binding.bind_ortvalue_input(name, value)
            binding.bind_ortvalue_output(name.replace("past_key_values", "present"), value)
        binding.bind_output("logits", "cpu")
        self._values, self._binding, self.capacity = values, binding, capacity

    def reserve(self, capacity: int) -> None:
        """Make room for `capacity` positions, keeping what is cached (on the CPU)."""
        if capacity > self.capacity:
            self._allocate(-(-capacity // _GROWTH) * _GROWTH)

    def truncate(self, length: int) -> None:
        """Forget every position from `length` on (their values are overwritten by later feeds)."""
        self.length = min(self.length, length)
        del self.keys[self.length:]

    def common_prefix(self, keys: Sequence[Hashable]) -> int:
        """How many leading positions of a prompt with `keys` this cache already holds."""
        n = 0
        for mine, theirs in zip(self.keys, keys):
            if mine != theirs:
                break
            n += 1
        return n

    def forward(self, embeds: np.ndarray, keys: Sequence[Hashable], *,
                positions: np.ndarray | None = None, deepstack: np.ndarray | None = None) -> np.ndarray:
        """Append `embeds` [seq, hidden] (what `keys` name) to the sequence; return the last
        position's logits [vocab] as float32. M-RoPE decoders take the prompt's `positions`
        [3, seq] (without them, text positions continue from the last); DeepStack decoders
        take `deepstack` [layers, seq, hidden] (zeros where not given: text)."""
        seq = embeds.shape[0]
        if len(keys) != seq:
            raise ValueError(f"{seq} embeddings but {len(keys)} keys")
        if self.length + seq > self.capacity:
            raise MMEdgeError(f"The KV cache holds {self.capacity} positions; {self.length} are "
                              f"used and {seq} more were fed. This is a bug in mmedge's generation "
                              "loop: please report it.")
        d, binding = self.decoder, self._binding
        binding.bind_cpu_input("inputs_embeds",
                               np.ascontiguousarray(embeds[None], dtype=d.embeds_dtype))
        total = self.length + seq
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if d.mrope:
            if positions is None:
                start = self.length + self.rope_delta
                positions = np.broadcast_to(np.arange(start, start + seq, dtype=np.int64), (3, seq))
            positions = np.ascontiguousarray(positions, dtype=np.int64)
            if positions.shape != (3, seq):
                raise ValueError(f"M-RoPE positions must be [3, {seq}], got {positions.shape}")
            binding.bind_cpu_input("position_ids", positions[:, None])
        elif d.has_position_ids:
            binding.bind_cpu_input("position_ids", np.arange(self.length, total, dtype=np.int64)[None])
        if d.deepstack_layers:
            if deepstack is None:
                deepstack = np.zeros((d.deepstack_layers, seq, d.hidden_size), d.embeds_dtype)
            binding.bind_cpu_input("deepstack_embeds",
                                   np.ascontiguousarray(deepstack[:, None], dtype=d.embeds_dtype))
        d.session.run_with_iobinding(binding)
        logits = binding.get_outputs()[-1].numpy()  # outputs come back in binding order; logits last
        if d.mrope:
            self.rope_delta = int(positions.max()) + 1 - total
        self.length = total
        self.keys.extend(keys)
        return logits[0, -1].astype(np.float32, copy=False)


class CachePool:
    """Hands out KV caches, at most `parallel` at once, and keeps returned ones warm for reuse.

    `acquire` gives the free cache sharing the longest prefix with the new prompt (or a new one
    while fewer than `parallel` exist). When every cache is in use it waits for one, up to
    `timeout` seconds (None: as long as it takes), except in a thread that holds a cache itself:
    waiting there could never end (say, a second stream started while the first is unfinished),
    so it is refused at once with a `BusyError` that says why and what to do.
    """

    def __init__(self, decoder: DecoderSession, parallel: int = 1, timeout: float | None = None):
        if not isinstance(parallel, int) or parallel < 1:
            raise MMEdgeError(f"parallel must be a whole number of at least 1, not {parallel!r}.")
        self.decoder, self.parallel, self.timeout = decoder, parallel, timeout
        self._free: list[KVCache] = []
        self._owners: dict[int, int] = {}  # id(cache in use) -> the thread that took it
        self._condition = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._condition:
            return len(self._owners)

    def acquire(self, keys: Sequence[Hashable], capacity: int, reuse: bool = True) -> tuple[KVCache, int]:
        """A cache with room for `capacity` positions and how many leading `keys` it already holds
        (at most len(keys) - MIN_FEED: the last positions are fed again for the logits)."""
        me = threading.get_ident()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        with self._condition:
            while not self._free and len(self._owners) >= self.parallel:
                if me in self._owners.values():
                    raise BusyError(
                        f"This model runs at most {self.parallel} generation(s) at once and this "
                        "thread already holds "
                        f"{'it' if self.parallel == 1 else 'all of them'} (an unfinished "
                        "stream?). Finish or close() the earlier stream first, or load the "
                        f"model with parallel={self.parallel + 1}.")
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise BusyError(f"All {self.parallel} generation slot(s) of this model stayed "
                                      f"busy for {self.timeout:g} s; try again later or load the "
                                      "model with a larger `parallel`.")
                self._condition.wait(left)
            if self._free:
                cache = max(self._free, key=lambda c: (c.common_prefix(keys) if reuse else 0, c.capacity))
                self._free.remove(cache)
            else:
                cache = self.decoder.new_cache(-(-capacity // _GROWTH) * _GROWTH)
            self._owners[id(cache)] = me
        try:
            cache.truncate(max(0, min(cache.common_prefix(keys), len(keys) - MIN_FEED)) if reuse else 0)
            cache.reserve(capacity)
        except BaseException:
            self.release(cache)
            raise
        return cache, cache.length

    def release(self, cache: KVCache) -> None:
        """Give a cache back (kept warm for a later prompt with the same prefix)."""
        with self._condition:
            if self._owners.pop(id(cache), None) is not None:
                self._free.append(cache)
                self._condition.notify()

    def clear(self) -> None:
        """Drop the free caches' memory (caches in use are kept until released)."""
        with self._condition:
            self._free.clear()
