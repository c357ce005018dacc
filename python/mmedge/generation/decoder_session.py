"""The decoder session and its KV cache, one sequence at a time.

The decoder graph (GroupQueryAttention, built at export) takes `inputs_embeds`, `attention_mask`
and `past_key_values.{i}.key/value`, and returns last-position `logits` and `present.*`. Its
attention reads and writes the cache in place when past and present are the same buffer, so the
cache is allocated once per generation at its final length and bound as both input and output:
no per-token allocation and no per-token copy of the cache (IO binding).

What lives elsewhere: sampling (mmedge.generation.sampling), the generation loop (mmedge.generation.loop).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnxruntime as ort

from mmedge.backend import Device

_ORT_TO_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                 "tensor(bfloat16)": np.float32}


class Decoder:
    """Runs prefill and decode steps of one sequence against a preallocated KV cache."""

    def __init__(self, session: ort.InferenceSession, spec: dict[str, Any], device: Device,
                 target: str = "cpu"):
        self.session = session
        self.device = device
        self.num_layers = spec["num_layers"]
        self.num_kv_heads = spec["num_kv_heads"]
        self.head_dim = spec["head_dim"]
        inputs = {i.name: i for i in session.get_inputs()}
        self.embeds_dtype = _ORT_TO_NUMPY[inputs["inputs_embeds"].type]
        self.kv_dtype = _ORT_TO_NUMPY[inputs["past_key_values.0.key"].type]
        self.has_position_ids = "position_ids" in inputs
        self._past_names = [f"past_key_values.{i}.{kv}"
                            for i in range(self.num_layers) for kv in ("key", "value")]
        self._cache: list[ort.OrtValue] = []
        self.capacity = 0
        self.length = 0           # tokens already in the cache
        self._binding: ort.IOBinding | None = None
        # The cache lives where the attention op runs: a graph built for the CPU (fp32/int8/int4)
        # keeps GroupQueryAttention on the CPU even under the CUDA provider (its CUDA kernel is
        # fp16/bf16 only), so only a CUDA-target graph gets a cache in GPU memory.
        self._ort_device = "cuda" if device.name == "cuda" and target == "cuda" else "cpu"

    def reset(self, capacity: int) -> None:
        """Start a new sequence with room for `capacity` tokens (reusing the cache when it fits)."""
        if capacity > self.capacity:
            shape = (1, self.num_kv_heads, capacity, self.head_dim)
            self._cache = [ort.OrtValue.ortvalue_from_shape_and_type(
                shape, self.kv_dtype, self._ort_device, 0) for _ in self._past_names]
            self.capacity = capacity
            binding = self.session.io_binding()
            for name, value in zip(self._past_names, self._cache):
                binding.bind_ortvalue_input(name, value)
                binding.bind_ortvalue_output(name.replace("past_key_values", "present"), value)
            binding.bind_output("logits", "cpu")
            self._binding = binding
        self.length = 0

    def forward(self, embeds: np.ndarray) -> np.ndarray:
        """Append `embeds` [seq, hidden] to the sequence; return the last position's logits [vocab]
        as float32."""
        seq = embeds.shape[0]
        if self.length + seq > self.capacity:
            raise RuntimeError(f"KV cache overflow: {self.length}+{seq} > {self.capacity}")
        binding = self._binding
        binding.bind_cpu_input("inputs_embeds",
                               np.ascontiguousarray(embeds[None], dtype=self.embeds_dtype))
        total = self.length + seq
        binding.bind_cpu_input("attention_mask", np.ones((1, total), dtype=np.int64))
        if self.has_position_ids:
            positions = np.arange(self.length, total, dtype=np.int64)[None]
            binding.bind_cpu_input("position_ids", positions)
        self.session.run_with_iobinding(binding)
        # Outputs come back in binding order; logits was bound last.
        logits = binding.get_outputs()[-1].numpy()
        self.length = total
        return logits[0, -1].astype(np.float32, copy=False)
