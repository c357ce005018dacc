"""`mmedge bench`: per-stage timings (preprocess, encode, prefill, time to first token, decode)
and peak memory of a bundle, medians over several runs after a warm-up run.

The cross-engine comparison (transformers, llama.cpp) lives in bench/ at the repository root; this
module only measures mmedge itself, with the runtime's own stage timers (GenerationStats).
"""

from __future__ import annotations

import resource
import statistics
import sys
from typing import Any

import numpy as np

from mmedge.generation.loop import GenerationStats

DEFAULT_PROMPT = "Describe this image briefly."
DEFAULT_TEXT_PROMPT = "Write a short story about a robot that learns to paint."


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 1024 / 1024


def synthetic_frame(height: int = 480, width: int = 640, seed: int = 0) -> np.ndarray:
    """A camera-frame-sized uint8 RGB image with some structure (not a flat colour)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x % 256, y % 256, (x ^ y) % 256], axis=-1).astype(np.uint8)
    return np.clip(frame + rng.integers(0, 32, frame.shape), 0, 255).astype(np.uint8)


def _row(stats: GenerationStats) -> dict[str, float]:
    return {"preprocess_ms": stats.preprocess_ms, "encode_ms": stats.encode_ms,
            "prefill_ms": stats.prefill_ms, "ttft_ms": stats.ttft_ms,
            "prefill_tok_s": stats.prefill_tok_s, "decode_tok_s": stats.decode_tok_s,
            "prompt_tokens": stats.prompt_tokens, "new_tokens": stats.new_tokens}


def bench_bundle(bundle: str, image: str | None = None, prompt: str | None = None,
                 new_tokens: int = 64, runs: int = 3, device: str = "auto",
                 threads: int | None = None) -> dict[str, Any]:
    from mmedge.vision.image import load_image
    from mmedge import load

    model = load(bundle, device=device, threads=threads)
    images = []
    if model.accepts_images:
        images = [load_image(image) if image else synthetic_frame()]
    prompt = prompt or (DEFAULT_PROMPT if images else DEFAULT_TEXT_PROMPT)
    rows = []
    for i in range(runs + 1):  # the first run warms up caches and thread pools
        # always decode `new_tokens` tokens so runs (and engines) are comparable
        model.generate(prompt, images, max_new_tokens=new_tokens, ignore_eos=True, reuse=False)
        if i:
            rows.append(_row(model.last_stats))
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    return {"bundle": bundle, "device": model.device.name, "threads": threads,
            "quantization": model.info()["quantization"], "runs": runs,
            "images": len(images), "median": median, "peak_rss_mb": peak_rss_mb()}


def format_stats(stats: GenerationStats) -> str:
    r = _row(stats)
    return (f"[stats] prompt {r['prompt_tokens']} tok, new {r['new_tokens']} tok | preprocess "
            f"{r['preprocess_ms']:.0f} ms, encode {r['encode_ms']:.0f} ms, prefill "
            f"{r['prefill_ms']:.0f} ms ({r['prefill_tok_s']:.0f} tok/s), TTFT {r['ttft_ms']:.0f} ms, "
            f"decode {r['decode_tok_s']:.1f} tok/s")


def format_bench(result: dict[str, Any]) -> str:
    m = result["median"]
    header = ("| stage | median |\n|---|---|")
    rows = [("device", result["device"]),
            ("precision", ", ".join(f"{k} {v}" for k, v in result["quantization"].items())),
            ("prompt tokens", f"{m['prompt_tokens']:.0f}"),
            ("image preprocess + patches", f"{m['preprocess_ms']:.1f} ms"),
            ("image encode", f"{m['encode_ms']:.1f} ms"),
            ("prefill", f"{m['prefill_ms']:.1f} ms ({m['prefill_tok_s']:.0f} tok/s)"),
            ("time to first token", f"{m['ttft_ms']:.1f} ms"),
            ("decode", f"{m['decode_tok_s']:.1f} tok/s over {m['new_tokens']:.0f} tokens"),
            ("peak RSS", f"{result['peak_rss_mb']:.0f} MB")]
    return header + "\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + \
        f"\n(medians of {result['runs']} runs after one warm-up)"
