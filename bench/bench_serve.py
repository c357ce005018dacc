"""Load test of `mmedge serve` on this machine's loopback: concurrent OpenAI clients mixing text
chat, image chat, multi-turn follow-ups and embeddings against the tiny VLM and CLIP bundles.

    python bench/bench_serve.py [--clients 8] [--requests 25] [--parallel 2] [--queue 16]
                                [--max-tokens 24] [--stop-at-eos] [--seed 0]
                                [--workdir DIR] [--bundles DIR] [--json FILE]

How: the real server runs as a subprocess (`mmedge serve tiny-vlm tiny-clip --host 127.0.0.1
--port FREE --parallel P --queue Q`, its log in --workdir/serve.log) and is always stopped at the
end, Ctrl-C and SIGTERM included. Only 127.0.0.1 / localhost are accepted as --host: this script never sends
load anywhere else. After /health answers 200, one request of each kind warms the server up; then
two identical runs follow, each C client threads x R requests, every thread with its own
`openai.OpenAI(max_retries=0)` client, all released together. Each client's sequence of request
kinds is drawn from a seeded RNG (the same in both runs):
    text      streaming chat, a short question, stream_options.include_usage
    image     streaming chat about a held-out scene, drawn from a pool of 8 (repeats hit the
              server's image feature cache)
    followup  the client's last conversation plus its answer and a new question (the KV cache of
              the slot that answered may hold the prefix: reused prompt tokens)
    embed     /v1/embeddings on tiny-clip: two texts and one pool image
Chat requests are greedy and send mmedge's `ignore_eos` extra, so every answer streams max_tokens
tokens (the tiny VLM's own answers are one to three tokens; a real model's are dozens);
--stop-at-eos lets answers end where the model ends them.
Client-side TTFT is the time to the first non-empty content delta, total latency the time to the
end of the stream (embeddings: total only). A 429 (openai.RateLimitError) is counted as rejected,
not retried; any other exception, or a stream without its usage chunk, is an error.

Checks (PASS/FAIL, exit status 1 on any FAIL): no errors; the server's RSS (VmRSS from
/proc/PID/status) grows by less than RSS_GROWTH_BOUND_MB during run 2 (run 1 may still allocate
caches and arenas; run 2 repeats it, so growth there would be a leak); no slot leak (the
/metrics gauges of running and waiting requests reach 0 within IDLE_WAIT_S of each run's end: a
worker thread may still be returning when its client has read the last byte); every 429 carried a
Retry-After header and the server's mmedge_rejected_requests agrees with the client's count.
/metrics is scraped before and after each run and its deltas are printed next to the client's own
figures. The clients share the server's CPU cores, so requests/s is a lower bound.

Bundles: --bundles DIR holding tiny-vlm/ and tiny-clip/ (default: --workdir); the ones missing
are exported into --workdir (`mmedge export mmedge-tiny-vlm --quant int4`, `mmedge-tiny-clip`).
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from functools import partial
from importlib.util import find_spec
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import fmt, load_average, markdown_table  # noqa: E402

LOOPBACK = ("127.0.0.1", "localhost")
VLM, CLIP = "tiny-vlm", "tiny-clip"
EXPORTS = {VLM: ["mmedge-tiny-vlm", "--quant", "int4"], CLIP: ["mmedge-tiny-clip"]}
KINDS = ("text", "image", "followup", "embed")
KIND_WEIGHTS = (0.3, 0.3, 0.2, 0.2)     # followup only after a chat; before one it is a text chat
SCENE_POOL = 8
RSS_GROWTH_BOUND_MB = 50.0
HEALTH_TIMEOUT_S = 180.0
IDLE_WAIT_S = 5.0       # after a run, how long running/waiting gauges may take to reach 0
TEXT_QUESTIONS = ("What is a robot?", "Name a colour.", "What shape has three sides?",
                  "Say hello.", "What is a circle?", "Count to three.", "What is a square?",
                  "Which colour is the sky?")
IMAGE_QUESTIONS = ("What colour is the shape?", "What shape is in the picture?",
                   "How many objects are there?", "Describe the image.",
                   "Where is the shape?", "What word is on the sign?")
FOLLOWUPS = ("And what else?", "Why?", "Say it again in other words.", "Is that all?",
             "What colour is it?", "How many are there?")
EMBED_TEXTS = ("a red circle", "a blue square", "a green triangle", "a yellow star",
               "a purple diamond", "an orange circle on the left", "a sign that says STOP")


# -- the server: bundles, process, health, RSS, metrics -----------------------------------------
def mmedge_command() -> list[str]:
    """The argv prefix that runs the `mmedge` command line with this interpreter's mmedge."""
    if find_spec("mmedge.__main__") is not None:
        return [sys.executable, "-m", "mmedge"]
    script = Path(sys.executable).parent / "mmedge"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-c", "import sys; from mmedge.cli import main; sys.exit(main())"]


def ensure_bundle(name: str, bundles: Path, workdir: Path) -> Path:
    """`bundles/name` if it is a complete bundle (its manifest is written last), else `name`
    exported once into `workdir` (through a .partial folder, so a broken export is never used)."""
    for folder in (bundles / name, workdir / name):
        if (folder / "manifest.json").exists():
            return folder
    target, staging = workdir / name, workdir / f"{name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    print(f"exporting {EXPORTS[name][0]} -> {target}", file=sys.stderr, flush=True)
    subprocess.run(mmedge_command() + ["export", EXPORTS[name][0], "-o", str(staging),
                                       *EXPORTS[name][1:]], check=True)
    staging.rename(target)
    return target


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start_server(vlm: Path, clip: Path, host: str, port: int, parallel: int, queue: int,
                 log_path: Path) -> subprocess.Popen:
    argv = mmedge_command() + ["serve", str(vlm), str(clip), "--host", host, "--port", str(port),
                               "--parallel", str(parallel), "--queue", str(queue)]
    with open(log_path, "wb") as log:   # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def stop_server(server: subprocess.Popen) -> None:
    """SIGTERM (uvicorn shuts down gracefully), SIGKILL if it is still there after 15 s."""
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def wait_healthy(base: str, server: subprocess.Popen, log_path: Path) -> float:
    """Seconds until GET /health answered 200; raises if the server exits or takes too long."""
    started = time.perf_counter()
    while time.perf_counter() - started < HEALTH_TIMEOUT_S:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited ({server.returncode}) before it was ready:\n"
                               f"{log_path.read_text()[-3000:]}")
        try:
            if http_get(f"{base}/health", timeout=2)[0] == 200:
                return time.perf_counter() - started
        except OSError:
            pass              # not listening yet
        time.sleep(0.25)
    raise RuntimeError(f"/health was not 200 within {HEALTH_TIMEOUT_S:g} s:\n"
                       f"{log_path.read_text()[-3000:]}")


def rss_mb(pid: int) -> float:
    """Resident set size of process `pid` in MB, from /proc (Linux)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")


def scrape_metrics(base: str) -> dict[tuple[str, str], float]:
    """GET /metrics as {(sample name, labels text): value} (Prometheus text format)."""
    status, text = http_get(f"{base}/metrics")
    if status != 200:
        raise RuntimeError(f"GET /metrics answered {status}")
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, labels = head.partition("{")
        samples[(name, labels.rstrip("}"))] = float(value)
    return samples


def scrape_when_idle(base: str, within_s: float = IDLE_WAIT_S) -> tuple[dict[tuple[str, str], float], float]:
    """/metrics once no request is running or waiting (a worker thread may still be returning
    when its client has read the last byte), or after `within_s`; (samples, seconds it took).
    Gauges still above 0 then are a slot leak."""
    started = time.perf_counter()
    while True:
        samples = scrape_metrics(base)
        busy = metric(samples, "mmedge_running_requests") + metric(samples, "mmedge_queue_length")
        if not busy or time.perf_counter() - started > within_s:
            return samples, time.perf_counter() - started
        time.sleep(0.01)


def metric(samples: dict[tuple[str, str], float], name: str, **labels: str) -> float:
    """The sum of `name` over the label sets holding every `labels` pair."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(v for (n, l), v in samples.items() if n == name and all(w in l.split(",") for w in wanted))


# -- the clients: a seeded plan, one request of each kind ---------------------------------------
def scene_urls() -> list[str]:
    """The pool of held-out scenes as PNG data URLs."""
    from mmedge.evaluation.scenes import HELD_OUT_SEED, scene

    urls = []
    for i in range(SCENE_POOL):
        buf = io.BytesIO()
        scene(i, HELD_OUT_SEED).image.save(buf, format="PNG")
        urls.append("data:image/png;base64," + base64.b64encode(buf.getvalue()).decode())
    return urls


def plan(clients: int, requests: int, seed: int) -> list[list[tuple[str, int]]]:
    """Per client, its requests as (kind, choice index): the same for every run with `seed`."""
    plans = []
    for c in range(clients):
        rng = random.Random(f"bench_serve/{seed}/{c}")
        steps, chatted = [], False
        for _ in range(requests):
            kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
            if kind == "followup" and not chatted:
                kind = "text"
            chatted = chatted or kind != "embed"
            steps.append((kind, rng.randrange(1 << 30)))
        plans.append(steps)
    return plans


@dataclass
class Outcome:
    kind: str
    status: str                       # "ok", "429" or "error"
    total_ms: float
    ttft_ms: float | None = None      # chat only, and only when some text came
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reused_tokens: int = 0            # the server's `mmedge` figures (chat)
    cached_images: int = 0
    server_ttft_ms: float | None = None
    queued_ms: float | None = None    # the server's wait for a free slot (chat)
    retry_after: str | None = None    # 429 only
    error: str | None = None


def stream_chat(client, messages: list[dict], max_tokens: int, ignore_eos: bool) -> tuple[Outcome, str]:
    """One streaming chat completion, timed; the outcome (kind set by the caller) and the text."""
    started = time.perf_counter()
    first = None
    text, usage, extra = [], None, {}
    stream = client.chat.completions.create(model=VLM, messages=messages, stream=True,
                                            stream_options={"include_usage": True},
                                            max_tokens=max_tokens, temperature=0,
                                            extra_body={"ignore_eos": True} if ignore_eos else None)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            if first is None:
                first = time.perf_counter()
            text.append(chunk.choices[0].delta.content)
        if chunk.usage is not None:
            usage, extra = chunk.usage, (chunk.model_extra or {}).get("mmedge", {})
    done = time.perf_counter()
    if usage is None:
        raise RuntimeError("the stream ended without its usage chunk")
    return Outcome("", "ok", (done - started) * 1e3,
                   None if first is None else (first - started) * 1e3,
                   usage.prompt_tokens, usage.completion_tokens, extra.get("reused_prompt_tokens", 0),
                   extra.get("cached_images", 0), extra.get("ttft_ms"), extra.get("queued_ms")), "".join(text)


def embed(client, urls: list[str], choice: int) -> Outcome:
    items = [EMBED_TEXTS[choice % len(EMBED_TEXTS)], EMBED_TEXTS[(choice // 7) % len(EMBED_TEXTS)],
             {"image": urls[choice % len(urls)]}]
    started = time.perf_counter()
    answer = client.embeddings.create(model=CLIP, input=items)
    total = (time.perf_counter() - started) * 1e3
    if len(answer.data) != len(items):
        raise RuntimeError(f"{len(answer.data)} embeddings for {len(items)} inputs")
    return Outcome("embed", "ok", total)


class Client:
    """One load-test client: its own OpenAI client and its last conversation (for follow-ups)."""

    def __init__(self, base: str, urls: list[str], max_tokens: int, ignore_eos: bool):
        import openai

        self.openai = openai
        self.client = openai.OpenAI(base_url=f"{base}/v1", api_key="x", max_retries=0, timeout=300)
        self.urls, self.max_tokens, self.ignore_eos = urls, max_tokens, ignore_eos
        self.conversation: list[dict] = []

    def messages(self, kind: str, choice: int) -> list[dict]:
        if kind == "text":
            return [{"role": "user", "content": TEXT_QUESTIONS[choice % len(TEXT_QUESTIONS)]}]
        if kind == "image":
            question = IMAGE_QUESTIONS[choice % len(IMAGE_QUESTIONS)]
            url = self.urls[(choice // 11) % len(self.urls)]
            return [{"role": "user", "content": [{"type": "text", "text": question},
                                                 {"type": "image_url", "image_url": {"url": url}}]}]
        return self.conversation + [{"role": "user", "content": FOLLOWUPS[choice % len(FOLLOWUPS)]}]

    def request(self, kind: str, choice: int) -> Outcome:
        """One request of `kind`; never raises: a 429 or an error is the outcome's status."""
        started = time.perf_counter()
        try:
            if kind == "embed":
                return embed(self.client, self.urls, choice)
            messages = self.messages(kind, choice)
            outcome, text = stream_chat(self.client, messages, self.max_tokens, self.ignore_eos)
            outcome.kind = kind
            self.conversation = messages + [{"role": "assistant", "content": text}]
            return outcome
        except self.openai.RateLimitError as e:
            return Outcome(kind, "429", (time.perf_counter() - started) * 1e3,
                           retry_after=e.response.headers.get("retry-after"))
        except Exception as e:   # noqa: BLE001 - every other failure is counted, the first shown
            return Outcome(kind, "error", (time.perf_counter() - started) * 1e3,
                           error=f"{type(e).__name__}: {str(e)[:300]}")


def run_load(new_client: Callable[[], Client],
             plans: list[list[tuple[str, int]]]) -> tuple[list[Outcome], float]:
    """Every client's plan in its own thread, started together; (outcomes, wall seconds)."""
    clients = [new_client() for _ in plans]
    results: list[list[Outcome]] = [[] for _ in plans]
    gate = threading.Barrier(len(plans) + 1)

    def work(k: int) -> None:
        gate.wait()
        for kind, choice in plans[k]:
            results[k].append(clients[k].request(kind, choice))

    threads = [threading.Thread(target=work, args=(k,), name=f"client-{k}", daemon=True) for k in range(len(plans))]
    for t in threads:
        t.start()
    gate.wait()
    started = time.perf_counter()
    for t in threads:
        t.join()
    return [o for r in results for o in r], time.perf_counter() - started


def warm_up(new_client: Callable[[], Client]) -> None:
    """One request of each kind; any failure stops the benchmark."""
    client = new_client()
    for kind in ("text", "image", "followup", "embed"):
        outcome = client.request(kind, 0)
        if outcome.status != "ok":
            raise RuntimeError(f"warm-up {kind} request failed: {outcome.status} {outcome.error}")


# -- figures --------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile `q` (0-100) of `values`; None when there are none."""
    if not values:
        return None
    xs = sorted(values)
    at = (len(xs) - 1) * q / 100
    lo = int(at)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (at - lo)


def mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def kind_rows(label: str, outcomes: list[Outcome]) -> list[list[str]]:
    rows = []
    for kind in KINDS + ("all",):
        mine = [o for o in outcomes if kind in ("all", o.kind)]
        ok = [o for o in mine if o.status == "ok"]
        chat_ok = [o for o in ok if o.kind != "embed"]
        ttft = [o.ttft_ms for o in ok if o.ttft_ms is not None]
        queued = [o.queued_ms for o in ok if o.queued_ms is not None]
        total = [o.total_ms for o in ok]
        reused = (f"{mean([o.reused_tokens for o in chat_ok]):.1f} / "
                  f"{mean([o.prompt_tokens for o in chat_ok]):.1f}" if chat_ok else "—")
        cached = sum(o.cached_images for o in chat_ok) if chat_ok else "—"
        rows.append([label, kind, len(mine), len(ok), sum(o.status == "429" for o in mine),
                     sum(o.status == "error" for o in mine), fmt(percentile(queued, 50)),
                     fmt(percentile(ttft, 50)),
                     fmt(percentile(ttft, 95)), fmt(percentile(total, 50)),
                     fmt(percentile(total, 95)), reused, cached])
    return rows


def server_figures(before: dict, after: dict) -> dict[str, float]:
    """What /metrics says happened between two scrapes."""
    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    ttft_n = delta("mmedge_time_to_first_token_seconds_count", model=VLM)
    return {"chat_200": delta("mmedge_requests_total", model=VLM, endpoint="chat", status="200"),
            "embeddings_200": delta("mmedge_requests_total", model=CLIP, endpoint="embeddings",
                                    status="200"),
            "rejected": delta("mmedge_rejected_requests_total"),
            "ttft_count": ttft_n,
            "ttft_mean_ms": (delta("mmedge_time_to_first_token_seconds_sum", model=VLM) / ttft_n * 1e3
                             if ttft_n else float("nan")),
            "generated_tokens": delta("mmedge_generated_tokens_total", model=VLM),
            "reused_prompt_tokens": delta("mmedge_reused_prompt_tokens_total", model=VLM),
            "prompt_tokens": delta("mmedge_prompt_tokens_total", model=VLM),
            "running_after": metric(after, "mmedge_running_requests"),
            "waiting_after": metric(after, "mmedge_queue_length")}


def client_figures(outcomes: list[Outcome], wall_s: float) -> dict[str, float]:
    ok = [o for o in outcomes if o.status == "ok"]
    chat = [o for o in ok if o.kind != "embed"]
    tokens = sum(o.completion_tokens for o in chat)
    return {"requests": len(outcomes), "ok": len(ok), "rejected": sum(o.status == "429" for o in outcomes),
            "errors": sum(o.status == "error" for o in outcomes),
            "chat_ok": len(chat), "embeddings_ok": len(ok) - len(chat),
            "wall_s": wall_s, "requests_per_s": len(ok) / wall_s, "tokens_per_s": tokens / wall_s,
            "completion_tokens": tokens,
            "reused_prompt_tokens": sum(o.reused_tokens for o in chat),
            "server_ttft_mean_ms": mean([o.server_ttft_ms for o in chat if o.server_ttft_ms is not None]),
            "client_ttft_mean_ms": mean([o.ttft_ms for o in chat if o.ttft_ms is not None]),
            "retry_after_missing": sum(o.status == "429" and not o.retry_after for o in outcomes)}


def print_report(args, runs: list[dict[str, Any]], rss: dict[str, float],
                 checks: list[tuple[str, bool]]) -> None:
    rows = [row for k, r in enumerate(runs) for row in kind_rows(f"run {k + 1}", r["outcomes"])]
    print(markdown_table(["run", "kind", "requests", "ok", "429", "errors", "p50 queued ms", "p50 TTFT ms",
                          "p95 TTFT ms", "p50 total ms", "p95 total ms",
                          "reused / prompt tok (mean)", "cached images"], rows))
    print("(Queued: the server's wait for a free slot, TTFT: to the first content delta, both chat "
          "only; \"all\": those over its chat requests, total over all. Reused: prompt tokens a slot's KV cache already held; cached images: "
          "images whose features the server had cached.)")
    print()
    print(markdown_table(
        ["run", "wall s", "ok requests/s", "generated tok/s", "RSS after MB"],
        [[f"run {k + 1}", fmt(r["client"]["wall_s"], 1), fmt(r["client"]["requests_per_s"], 1),
          fmt(r["client"]["tokens_per_s"], 1), fmt(r["rss_after_mb"])] for k, r in enumerate(runs)]))
    print("\nserver RSS: " + ", ".join(f"{v:.0f} MB {k}" for k, v in rss.items())
          + f" (run 1 {run_growth(rss, 1):+.1f} MB, run 2 {run_growth(rss, 2):+.1f} MB; "
          f"bound for run 2: {RSS_GROWTH_BOUND_MB:g} MB)")
    print("\n/metrics against the clients (per run, deltas between scrapes):")
    print(markdown_table(
        ["run", "chat 200 (server / client)", "embeddings 200", "429 rejected",
         "generated tokens", "reused prompt tokens",
         "mean TTFT ms (metric / response field / client)"],
        [[f"run {k + 1}", f"{s['chat_200']:.0f} / {c['chat_ok']}",
          f"{s['embeddings_200']:.0f} / {c['embeddings_ok']}", f"{s['rejected']:.0f} / {c['rejected']}",
          f"{s['generated_tokens']:.0f} / {c['completion_tokens']}",
          f"{s['reused_prompt_tokens']:.0f} / {c['reused_prompt_tokens']}",
          f"{s['ttft_mean_ms']:.1f} / {c['server_ttft_mean_ms']:.1f} / {c['client_ttft_mean_ms']:.1f}"]
         for k, r in enumerate(runs) for s, c in [(r["server"], r["client"])]]))
    errors = [o for r in runs for o in r["outcomes"] if o.status == "error"]
    for o in errors[:5]:
        print(f"error ({o.kind}): {o.error}")
    print(f"\n{args.clients} clients x {args.requests} requests a run, server --parallel "
          f"{args.parallel} --queue {args.queue}, max_tokens {args.max_tokens}"
          f"{'' if args.stop_at_eos else ' (ignore_eos)'}, seed {args.seed}, "
          f"{os.cpu_count()} CPUs, load average {runs[0]['load']} -> {runs[-1]['load_after']}.")
    for name, ok in checks:
        print(f"{'PASS' if ok else 'FAIL'}: {name}")


def run_growth(rss: dict[str, float], run: int) -> float:
    """How much the server's RSS grew during run `run` (1 or 2), MB."""
    readings = list(rss.values())[1:]          # after warm-up, after run 1, after run 2
    return readings[run] - readings[run - 1]


def checks_of(runs: list[dict[str, Any]], rss: dict[str, float]) -> list[tuple[str, bool]]:
    clients = [r["client"] for r in runs]
    servers = [r["server"] for r in runs]
    return [
        ("errors == 0", all(c["errors"] == 0 for c in clients)),
        (f"RSS growth during run 2 < {RSS_GROWTH_BOUND_MB:g} MB ({run_growth(rss, 2):+.1f} MB)",
         run_growth(rss, 2) < RSS_GROWTH_BOUND_MB),
        (f"no slot leak (running and waiting requests 0 within {IDLE_WAIT_S:g} s of each run's end; "
         + ", ".join(f"{s['idle_after_s'] * 1e3:.0f} ms" for s in servers) + ")",
         all(s["running_after"] == 0 and s["waiting_after"] == 0 for s in servers)),
        ("server's rejected count == client's 429s, each with Retry-After",
         all(s["rejected"] == c["rejected"] and c["retry_after_missing"] == 0
             for s, c in zip(servers, clients))),
    ]


# -- main -----------------------------------------------------------------------------------------
def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--requests", type=int, default=25, help="requests per client per run (default 25)")
    p.add_argument("--parallel", type=int, default=2, help="server --parallel (default 2)")
    p.add_argument("--queue", type=int, default=16, help="server --queue (default 16)")
    p.add_argument("--max-tokens", type=int, default=24, help="max_tokens of each chat request (default 24)")
    p.add_argument("--stop-at-eos", action="store_true",
                   help="let answers end at the model's end-of-answer token (default: ignore_eos, "
                        "every answer is max_tokens long)")
    p.add_argument("--seed", type=int, default=0, help="the request mix's seed")
    p.add_argument("--host", default="127.0.0.1", help="127.0.0.1 or localhost (loopback only)")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/mmedge-bench-serve"))
    p.add_argument("--bundles", type=Path, default=None,
                   help="a folder with tiny-vlm/ and tiny-clip/ (default: --workdir)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args()
    if args.host not in LOOPBACK:
        p.error(f"--host {args.host}: this load test runs on the loopback only ({' or '.join(LOOPBACK)})")
    if args.clients < 1 or args.requests < 1 or args.parallel < 1 or args.queue < 0 or args.max_tokens < 1:
        p.error("--clients, --requests, --parallel and --max-tokens must be at least 1, --queue at least 0")
    return args


def measure(base: str, pid: int, new_client: Callable[[], Client], plans) -> dict[str, Any]:
    """One load run, with /metrics scraped around it."""
    before, load = scrape_metrics(base), load_average()
    outcomes, wall = run_load(new_client, plans)
    after, settle_s = scrape_when_idle(base)
    return {"outcomes": outcomes, "client": client_figures(outcomes, wall),
            "server": {**server_figures(before, after), "idle_after_s": settle_s},
            "load": load, "load_after": load_average(),
            "rss_after_mb": rss_mb(pid)}


def _terminated(signum, frame) -> None:
    raise SystemExit(128 + signum)     # so that `finally` stops the server, as on Ctrl-C


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _terminated)
    workdir = args.workdir.expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    bundles = (args.bundles or workdir).expanduser()
    vlm, clip = ensure_bundle(VLM, bundles, workdir), ensure_bundle(CLIP, bundles, workdir)
    urls, plans = scene_urls(), plan(args.clients, args.requests, args.seed)
    host = "127.0.0.1" if args.host == "localhost" else args.host
    port = free_port(host)
    base, log_path = f"http://{host}:{port}", workdir / "serve.log"
    started = time.perf_counter()
    server = start_server(vlm, clip, host, port, args.parallel, args.queue, log_path)
    try:
        ready_s = wait_healthy(base, server, log_path)
        print(f"server pid {server.pid} ready in {ready_s:.1f} s on {base} (log {log_path}); "
              f"bundles {vlm}, {clip}", file=sys.stderr, flush=True)
        rss = {"loaded": rss_mb(server.pid)}
        new_client = partial(Client, base, urls, args.max_tokens, not args.stop_at_eos)
        warm_up(new_client)
        rss["after warm-up"] = rss_mb(server.pid)
        runs = []
        for k in range(2):
            print(f"run {k + 1}/2 ...", file=sys.stderr, flush=True)
            runs.append(measure(base, server.pid, new_client, plans))
            rss[f"after run {k + 1}"] = runs[-1]["rss_after_mb"]
    finally:
        stop_server(server)
    checks = checks_of(runs, rss)
    print_report(args, runs, rss, checks)
    print(f"(whole benchmark, server start to stop: {time.perf_counter() - started:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(
            {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
             "rss_mb": {**rss, "bound_run_2_growth": RSS_GROWTH_BOUND_MB},
             "runs": [{"client": r["client"], "server": r["server"],
                       "outcomes": [asdict(o) for o in r["outcomes"]]} for r in runs],
             "checks": {name: ok for name, ok in checks}}, indent=1))
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
