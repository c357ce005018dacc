"""Image to first token on a LLaVA-1.5-shaped model: mmedge (three vision/decoder precision pairs)
against transformers (fp32, PyTorch eager), stage by stage.

    python bench/bench_image.py [--preset vit-l-14-336|vit-b-16-224] [--threads 2] [--reps 3]
                                [--new-tokens 64] [--workdir DIR]

The model is `mmedge.models.tiny.build_llava_shaped`: a CLIP vision tower of real shape with
random (seeded) weights, the LLaVA MLP projector, and the real SmolLM2-135M-Instruct. Random vision
weights make the answers meaningless but the speed real. The input is a 640x480 JPEG (written from
`mmedge.benchmark.synthetic_frame`), the prompt "Describe this image briefly.", greedy, EOS ignored.

Stages: preprocess (JPEG decode + resize/normalize, and for mmedge the patch embedding, fused in its
kernel; for transformers the whole processor call, tokenization included), encode (vision tower +
projector; for mmedge from the patch tokens on), prefill (first decoder forward),
TTFT (call to first token), decode tok/s. Every configuration runs in its own fresh process, one
warm-up then the measured run, alternating within each repetition; medians over repetitions.
An accuracy note compares the int8 vision features with the fp32 ones on the same image.

The HF folder and the bundles are cached in --workdir and re-used.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (export_once, fmt, load_average, markdown_table,  # noqa: E402
                     medians, run_worker, serve_worker)

PROMPT = "Describe this image briefly."
CONFIGS = (("fp32", "int4"), ("int8", "int4"), ("int8", "int8"))  # (vision, decoder) precision
STAGES = ("preprocess_ms", "encode_ms", "prefill_ms")


# -- workers: one configuration, one fresh process -----------------------------------------------
def _mmedge_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import mmedge

    model = mmedge.load(spec["bundle"], device="cpu", threads=spec["threads"])
    for _ in range(2):  # warm-up, then the measured run
        model.generate(PROMPT, images=[spec["image"]], max_new_tokens=spec["new_tokens"],
                       ignore_eos=True, reuse=False)  # no warm KV prefix, no cached features
    s = model.last_stats
    return {"prompt_tokens": s.prompt_tokens, "image_tokens": s.image_tokens,
            "preprocess_ms": s.preprocess_ms, "encode_ms": s.encode_ms,
            "prefill_ms": s.prefill_ms, "ttft_ms": s.ttft_ms, "decode_tok_s": s.decode_tok_s}


def _transformers_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from PIL import Image
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.set_num_threads(spec["threads"])
    processor = AutoProcessor.from_pretrained(spec["folder"])
    model = LlavaForConditionalGeneration.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    config = model.config
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    new_tokens = spec["new_tokens"]

    @torch.inference_mode()
    def run() -> dict[str, Any]:
        started = time.perf_counter()
        image = Image.open(spec["image"]).convert("RGB")
        text = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(images=image, text=text, return_tensors="pt")
        t_pre = time.perf_counter()
        features = model.model.get_image_features(
            pixel_values=inputs["pixel_values"], vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy).pooler_output
        features = torch.cat(list(features)) if isinstance(features, (list, tuple)) else features
        t_enc = time.perf_counter()
        ids = inputs["input_ids"]
        embeds = model.get_input_embeddings()(ids)
        slots = (ids == config.image_token_id).unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(slots, features.to(embeds.dtype))
        out = model(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        t_first = time.perf_counter()
        past = out.past_key_values
        for _ in range(new_tokens - 1):  # greedy, EOS ignored
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        t_end = time.perf_counter()
        return {"prompt_tokens": ids.shape[1], "image_tokens": int(features.shape[0]),
                "preprocess_ms": (t_pre - started) * 1e3, "encode_ms": (t_enc - t_pre) * 1e3,
                "prefill_ms": (t_first - t_enc) * 1e3, "ttft_ms": (t_first - started) * 1e3,
                "decode_tok_s": (new_tokens - 1) / (t_end - t_first)}

    run()  # warm-up
    return run()


def _accuracy_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """int8 vs fp32 vision features of the same image, through the bundles' own vision graphs."""
    import numpy as np

    import mmedge

    feats = {}
    for key in ("fp32", "int8"):
        model = mmedge.load(spec[key], device="cpu", threads=spec["threads"])
        out = model.encode_images([spec["image"]])
        feats[key] = out.reshape(-1, out.shape[-1]).astype(np.float64)
        del model
    a, b = feats["fp32"], feats["int8"]
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"max_abs": float(np.abs(a - b).max()), "mean_abs": float(np.abs(a - b).mean()),
            "max_abs_fp32": float(np.abs(a).max()), "cos_mean": float(cos.mean()),
            "cos_min": float(cos.min()),
            "cos_all": float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))}


WORKERS = {"mmedge": _mmedge_worker, "transformers": _transformers_worker,
           "accuracy": _accuracy_worker}


# -- the parent ----------------------------------------------------------------------------------
def _prepare_model(workdir: Path, preset: str) -> Path:
    folder = workdir / f"llava-{preset}-hf"
    if not (folder / "config.json").exists():
        from mmedge.models.tiny import build_llava_shaped

        partial = workdir / f".llava-{preset}-hf.partial"
        print(f"building the LLaVA-shaped model ({preset}) -> {folder}", file=sys.stderr, flush=True)
        build_llava_shaped(partial, vision_preset=preset)
        partial.rename(folder)
    return folder


def _prepare_image(workdir: Path) -> Path:
    from PIL import Image

    from mmedge.evaluation.speed import synthetic_frame

    path = workdir / "frame-640x480.jpg"
    if not path.exists():
        Image.fromarray(synthetic_frame(480, 640)).save(path, quality=90)
    return path


def _dominant(m: dict[str, float]) -> str:
    stage = max(STAGES, key=lambda k: m[k])
    return f"{stage[:-3]} ({100 * m[stage] / m['ttft_ms']:.0f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="vit-l-14-336", choices=("vit-l-14-336", "vit-b-16-224"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmedge-bench"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if serve_worker(args.worker, WORKERS):
        return

    workdir = args.workdir.expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    folder = _prepare_model(workdir, args.preset)
    image = _prepare_image(workdir)
    common = {"threads": args.threads, "image": str(image), "new_tokens": args.new_tokens}
    engines: list[dict[str, Any]] = []
    for vision, decoder in CONFIGS:
        bundle = export_once(str(folder), workdir / f"llava-{args.preset}-v{vision}-d{decoder}",
                             decoder, vision)
        engines.append({"name": f"mmedge v{vision} d{decoder}", "engine": "mmedge",
                        "vision": vision, "decoder": decoder, "bundle": str(bundle), **common})
    engines.append({"name": "transformers fp32", "engine": "transformers", "vision": "fp32",
                    "decoder": "fp32", "folder": str(folder), **common})

    script = str(Path(__file__).resolve())
    loads = [load_average()]
    results: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for spec in engines:
            print(f"rep {rep + 1}/{args.reps}: {spec['name']}", file=sys.stderr, flush=True)
            results.setdefault(spec["name"], []).append(run_worker(script, spec))
        loads.append(load_average())
    bundles = {e["vision"]: e["bundle"] for e in engines if e["engine"] == "mmedge"}
    accuracy = run_worker(script, {"name": "accuracy", "engine": "accuracy", "fp32": bundles["fp32"],
                                   "int8": bundles["int8"], **common})

    rows = []
    for spec in engines:
        m = medians(results[spec["name"]])
        rows.append([spec["engine"], spec["vision"], spec["decoder"], args.threads,
                     fmt(m["preprocess_ms"], 1), fmt(m["encode_ms"]), fmt(m["prefill_ms"]),
                     fmt(m["ttft_ms"]), fmt(m["decode_tok_s"], 1), fmt(m["peak_rss_mb"]),
                     _dominant(m)])
    print(markdown_table(["engine", "vision", "decoder", "threads", "preprocess ms", "encode ms",
                          "prefill ms", "TTFT ms", "decode tok/s", "peak RSS MB",
                          "TTFT dominated by"], rows))
    first = results[engines[0]["name"]][0]
    print(f"\nLLaVA-1.5-shaped {args.preset} (random vision weights) + SmolLM2-135M-Instruct; "
          f"640x480 JPEG, \"{PROMPT}\"; {first['image_tokens']} image tokens, "
          f"{first['prompt_tokens']} prompt tokens (mmedge); {args.new_tokens} new tokens; "
          f"medians of {args.reps} repetition(s), each configuration in its own process after "
          f"one warm-up.")
    for spec in engines:
        r = results[spec["name"]][0]
        per_rep = ", ".join(fmt(x["ttft_ms"]) for x in results[spec["name"]])
        print(f"- {spec['name']}: prompt {r['prompt_tokens']} tokens, {r['image_tokens']} image "
              f"tokens; TTFT ms per rep {per_rep}")
    print(f"- int8 vs fp32 vision features (same image, {first['image_tokens']} tokens): max abs "
          f"diff {accuracy['max_abs']:.4g} (max |fp32| {accuracy['max_abs_fp32']:.3g}), mean abs "
          f"diff {accuracy['mean_abs']:.3g}, cosine per token mean {accuracy['cos_mean']:.5f} / "
          f"min {accuracy['cos_min']:.5f}, whole tensor {accuracy['cos_all']:.5f} "
          f"(random vision weights: real checkpoints must be measured on their own)")
    print(f"- load average (1/5/15 min) before and after each repetition: {' -> '.join(loads)}")


if __name__ == "__main__":
    main()
