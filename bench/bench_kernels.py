"""The native CPU kernels of `mmedge.kernels` against what they would replace, on this machine.

    python bench/bench_kernels.py [--threads 1] [--budget 0.4] [--only patch|attention]

Patch embedding: a 640x480 or 1920x1080 uint8 frame to the vision tower's input tokens, at four
target sizes (model shapes below), three ways:
  hf+ort      transformers' image processor (CLIP/SigLIP, PIL path) on the frame, then the patch
              conv alone on ONNX Runtime (CPU EP);
  mmedge+ort  mmedge.preprocess.ImagePreprocessor (the runtime's path today), then the same conv;
  fused       mmedge.kernels.patch_embed (resize + crop + normalize + conv + class/positions);
and the conv alone on already preprocessed pixels, the GEMM every path pays for: its ratio to
hf+ort ("ceiling") is the most any faster preprocessing can gain.
Attention, float32: prefill (one image: 197/577/1025 tokens, 12 heads, d 64, non-causal) and decode
(1 query against 128..4096 cached keys, 9 query heads / 3 kv heads, d 64), four ways: naive numpy
(matmul, softmax, matmul), torch SDPA, ONNX Runtime's com.microsoft MultiHeadAttention (prefill) or
GroupQueryAttention (decode; ORT copies past into present each call, as it does without buffer
sharing), and mmedge.kernels.attention (preallocated out and scratch).

Every engine gets the same thread count (--threads; ORT intra-op threads, torch.set_num_threads,
the kernels' num_threads). Times are medians of repeated calls after a warm-up, in milliseconds,
the engines of one row called in turn so that load spikes hit all of them.
The machine's load average is printed: on a shared machine the numbers move with it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

# numpy's BLAS gets the same thread count as every other engine (read before numpy loads). No
# engine's idle threads spin: the engines share one process and are called in turn, and a pool
# spinning after its call would steal the cores the next engine's threads need.
_THREADS = sys.argv[sys.argv.index("--threads") + 1] if "--threads" in sys.argv else "1"
for _var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, _THREADS)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # libgomp: torch's and mmedge's OpenMP

import numpy as np  # noqa: E402

# (label, processor, size, patch, D): the shapes of real towers at those resolutions.
PATCH_TARGETS = [
    ("224 clip L/14", "clip", 224, 14, 1024),
    ("336 clip L/14", "clip", 336, 14, 1024),
    ("384 siglip so400m/14", "siglip", 384, 14, 1152),
    ("512 siglip B/16", "siglip", 512, 16, 768),
]
FRAMES = [(480, 640), (1080, 1920)]
PREFILL = [197, 577, 1025]
DECODE = [128, 512, 1024, 4096]


def timed(fns: list, budget: float) -> list[float | None]:
    """Median milliseconds of each fn() (None stays None), called round-robin for about `budget`
    seconds per fn (at least 5 rounds, after one warm-up each): on a shared machine a load spike
    then hits every engine alike instead of whichever ran during it."""
    live = [f for f in fns if f is not None]
    for f in live:
        f()
    times: list[list[float]] = [[] for _ in live]
    start = time.perf_counter()
    while len(times[0]) < 5 or (time.perf_counter() - start < budget * len(live)
                                and len(times[0]) < 200):
        for f, ts in zip(live, times):
            t = time.perf_counter()
            f()
            ts.append((time.perf_counter() - t) * 1e3)
    medians = iter(statistics.median(ts) for ts in times)
    return [None if f is None else next(medians) for f in fns]


def table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def ms(x: float | None) -> str:
    return "n/a" if x is None else (f"{x:.2f}" if x < 10 else f"{x:.1f}")


def ort_session(model, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# -- patch embedding --------------------------------------------------------------------------------
def spec_for(processor: str, size: int, patch: int) -> dict:
    if processor == "clip":
        return {"processor": "clip", "do_convert_rgb": True, "do_resize": True,
                "size": {"shortest_edge": size}, "resample": 3, "do_center_crop": True,
                "crop_size": {"height": size, "width": size}, "do_rescale": True,
                "rescale_factor": 1 / 255, "do_normalize": True,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711], "image_size": [size, size],
                "patch_size": patch}
    return {"processor": "siglip", "do_convert_rgb": True, "do_resize": True,
            "size": {"height": size, "width": size}, "resample": 3, "do_center_crop": False,
            "crop_size": None, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": [0.5] * 3, "image_std": [0.5] * 3, "image_size": [size, size],
            "patch_size": patch}


def hf_processor(spec: dict):
    from transformers import CLIPImageProcessor, SiglipImageProcessor

    common = dict(do_resize=True, resample=3, do_rescale=True, rescale_factor=1 / 255,
                  do_normalize=True, image_mean=spec["image_mean"], image_std=spec["image_std"])
    if spec["processor"] == "clip":
        return CLIPImageProcessor(size=spec["size"], crop_size=spec["crop_size"],
                                  do_center_crop=True, **common)
    return SiglipImageProcessor(size=spec["size"], **common)


def conv_model(weight: np.ndarray, bias: np.ndarray | None):
    from onnx import TensorProto, helper, numpy_helper

    d, _, p, _ = weight.shape
    inits = [numpy_helper.from_array(weight, "w")] + ([numpy_helper.from_array(bias, "b")] if bias is not None else [])
    node = helper.make_node("Conv", ["pixel_values", "w"] + (["b"] if bias is not None else []),
                            ["patches"], kernel_shape=[p, p], strides=[p, p])
    graph = helper.make_graph([node], "patch_conv",
                              [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, [1, 3, None, None])],
                              [helper.make_tensor_value_info("patches", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def bench_patch(threads: int, budget: float) -> None:
    from PIL import Image

    from mmedge import kernels
    from mmedge.evaluation.speed import synthetic_frame
    from mmedge.vision.preprocess import ImagePreprocessor

    rows = []
    for fh, fw in FRAMES:
        frame = synthetic_frame(fh, fw)
        pil = Image.fromarray(frame)
        for label, proc, size, patch, dim in PATCH_TARGETS:
            spec = spec_for(proc, size, patch)
            rng = np.random.default_rng(1)
            n = (size // patch) ** 2
            weights = {"weight": (rng.standard_normal((dim, 3, patch, patch)) * 0.02).astype(np.float32),
                       "position_embedding": rng.standard_normal((n + (proc == "clip"), dim)).astype(np.float32)}
            if proc == "clip":
                weights["class_embedding"] = rng.standard_normal(dim).astype(np.float32)
            else:
                weights["bias"] = rng.standard_normal(dim).astype(np.float32)
            sess = ort_session(conv_model(weights["weight"], weights.get("bias")), threads)
            hf = hf_processor(spec)
            pre = ImagePreprocessor(spec)

            def hf_ort():
                pv = hf(images=frame, return_tensors="np")["pixel_values"]
                return sess.run(None, {"pixel_values": pv})[0]

            def mm_ort():
                return sess.run(None, {"pixel_values": pre.preprocess_one(pil)[None]})[0]

            pixels = pre.preprocess_one(pil)[None]

            def conv_alone():  # the projection every path pays for, on preprocessed pixels
                return sess.run(None, {"pixel_values": pixels})[0]

            out = np.empty((n + (proc == "clip"), dim), np.float32)

            def fused():
                return kernels.patch_embed(frame, pre, weights, out=out, num_threads=threads)

            # The same numbers: the fused patch tokens minus positions equal the conv's output.
            conv = mm_ort()[0].reshape(dim, -1).T
            n_cls = 1 if proc == "clip" else 0
            got = fused()[n_cls:] - weights["position_embedding"][n_cls:]
            err = float(np.abs(got - conv).max())
            t_hf, t_mm, t_fused, t_conv = timed([hf_ort, mm_ort, fused, conv_alone], budget)
            rows.append([f"{fw}x{fh}", label, ms(t_hf), ms(t_mm), ms(t_fused), ms(t_conv),
                         f"{t_hf / t_fused:.1f}x", f"{t_hf / t_conv:.1f}x", f"{err:.1e}"])
            print(rows[-1], flush=True)
    print("\nPatch embedding, frame -> tokens (ms, median)\n")
    print(table(["frame", "target", "hf processor + ORT conv", "mmedge preprocess + ORT conv",
                 "fused kernel", "ORT conv alone", "speed-up vs hf", "ceiling", "max |diff| vs conv"],
                rows))
    print("\nceiling = (hf processor + ORT conv) / (ORT conv alone): the speed-up a path would get if its "
          "preprocessing cost nothing and its projection ran as fast as ORT's conv (the same "
          "[tokens, 3 P P] x [3 P P, D] GEMM in fp32); where it is under 10x, a 10x goal cannot be met "
          "by preprocessing, only by a faster GEMM than ONNX Runtime's.")


# -- attention ---------------------------------------------------------------------------------------
def naive(q, k, v, scale):
    group = q.shape[1] // k.shape[1]
    if group > 1:
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
    s = q @ k.transpose(0, 1, 3, 2) * np.float32(scale)
    s = np.exp(s - s.max(-1, keepdims=True))
    return (s / s.sum(-1, keepdims=True)) @ v


def mha_model(heads: int, d: int):
    from onnx import TensorProto, helper

    io = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, None, heads * d])  # noqa: E731
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["o"], domain="com.microsoft",
                            num_heads=heads)
    graph = helper.make_graph([node], "mha", [io("q"), io("k"), io("v")], [io("o")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def gqa_model(heads: int, kv_heads: int, d: int):
    from onnx import TensorProto, helper

    f = lambda n, s: helper.make_tensor_value_info(n, TensorProto.FLOAT, s)  # noqa: E731
    i = lambda n, s: helper.make_tensor_value_info(n, TensorProto.INT32, s)  # noqa: E731
    node = helper.make_node(
        "GroupQueryAttention", ["q", "k", "v", "past_k", "past_v", "seqlens_k", "total_len"],
        ["o", "present_k", "present_v"], domain="com.microsoft", num_heads=heads,
        kv_num_heads=kv_heads)
    graph = helper.make_graph(
        [node], "gqa",
        [f("q", [1, 1, heads * d]), f("k", [1, 1, kv_heads * d]), f("v", [1, 1, kv_heads * d]),
         f("past_k", [1, kv_heads, None, d]), f("past_v", [1, kv_heads, None, d]),
         i("seqlens_k", [1]), i("total_len", [])],
        [f("o", None), f("present_k", None), f("present_v", None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def bench_attention(threads: int, budget: float) -> None:
    import torch

    from mmedge import kernels

    torch.set_num_threads(threads)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    rows = []
    d = 64
    cases = [("prefill", t, 12, 12, t) for t in PREFILL] + [("decode", 1, 9, 3, n) for n in DECODE]
    for kind, t, h, hkv, n in cases:
        rng = np.random.default_rng(t + n)
        q = rng.standard_normal((1, h, t, d), dtype=np.float32)
        k = rng.standard_normal((1, hkv, n, d), dtype=np.float32)
        v = rng.standard_normal((1, hkv, n, d), dtype=np.float32)
        scale = 1 / np.sqrt(d)
        out = np.empty_like(q)
        scratch = np.empty(kernels.attention_scratch_size(1, h, hkv, t, d, threads), np.float32)
        tq, tk, tv = (torch.from_numpy(x) for x in (q, k, v))

        def ours():
            return kernels.attention(q, k, v, out=out, scratch=scratch, num_threads=threads)

        def torch_sdpa():
            with torch.no_grad():
                return sdpa(tq, tk, tv, enable_gqa=hkv != h)

        ort_fn, ort_check = None, None
        try:
            if kind == "prefill":
                sess = ort_session(mha_model(h, d), threads)
                feeds = {name: np.ascontiguousarray(x.transpose(0, 2, 1, 3).reshape(1, -1, x.shape[1] * d))
                         for name, x in (("q", q), ("k", k), ("v", v))}
                ort_fn = lambda: sess.run(["o"], feeds)[0]  # noqa: E731
                ort_check = lambda: ort_fn().reshape(1, t, h, d).transpose(0, 2, 1, 3)  # noqa: E731
            else:
                sess = ort_session(gqa_model(h, hkv, d), threads)
                feeds = {"q": q.transpose(0, 2, 1, 3).reshape(1, 1, h * d),
                         "k": np.ascontiguousarray(k[:, :, -1:].transpose(0, 2, 1, 3).reshape(1, 1, hkv * d)),
                         "v": np.ascontiguousarray(v[:, :, -1:].transpose(0, 2, 1, 3).reshape(1, 1, hkv * d)),
                         "past_k": np.ascontiguousarray(k[:, :, :-1]),
                         "past_v": np.ascontiguousarray(v[:, :, :-1]),
                         "seqlens_k": np.array([n - 1], np.int32), "total_len": np.array(n, np.int32)}
                ort_fn = lambda: sess.run(["o"], feeds)[0]  # noqa: E731
                ort_check = lambda: ort_fn().reshape(1, 1, h, d).transpose(0, 2, 1, 3)  # noqa: E731
        except Exception as exc:  # an op or attribute this onnxruntime lacks
            print(f"ORT {kind} unavailable: {exc}", file=sys.stderr)
            ort_fn = None

        ref = naive(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), scale)
        errs = {"ours": np.abs(ours() - ref).max(), "torch": np.abs(torch_sdpa().numpy() - ref).max()}
        if ort_fn is not None:
            try:
                errs["ort"] = np.abs(ort_check() - ref).max()
            except Exception as exc:
                print(f"ORT {kind} failed: {exc}", file=sys.stderr)
                ort_fn = None
        t_np, t_torch, t_ort, t_ours = timed(
            [lambda: naive(q, k, v, scale), torch_sdpa, ort_fn, ours], budget)
        best = min(x for x in (t_np, t_torch, t_ort) if x is not None)
        rows.append([kind, f"{t}x{n}", f"{h}/{hkv}", ms(t_np), ms(t_torch), ms(t_ort), ms(t_ours),
                     f"{best / t_ours:.2f}x",
                     " ".join(f"{name} {e:.0e}" for name, e in errs.items())])
        print(rows[-1], flush=True)
    print("\nAttention, float32, d=64 (ms, median)\n")
    print(table(["kind", "queries x keys", "heads q/kv", "numpy naive", "torch SDPA",
                 "ORT MHA/GQA", "mmedge fused", "speed-up vs best other", "max |err| vs fp64"], rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", type=float, default=0.4, help="seconds of timing per measurement")
    ap.add_argument("--only", choices=["patch", "attention"])
    args = ap.parse_args()
    from mmedge import _C

    print(f"mmedge._C {_C.__version__}, CPU ISA {_C.cpu_simd_isa()}, threads {args.threads}, "
          f"{os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.only != "attention":
        bench_patch(args.threads, args.budget)
    if args.only != "patch":
        bench_attention(args.threads, args.budget)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
