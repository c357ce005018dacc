"""The server's figures at `GET /metrics`, in Prometheus' text format (what Prometheus, Grafana
Agent, VictoriaMetrics and most device fleet monitors scrape), from the `prometheus_client` library.

Per model: requests by endpoint and status, requests refused because the queue was full,
requests waiting and running now, time to first token and whole-request latency (histograms),
prompt and generated tokens (counters: `rate()` of them is tokens/s over any window), and the
last generation's decode speed (a gauge, for a glance). Each app has a registry of its own, so
two apps in one process (tests) do not mix their figures.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

# Seconds; from a cached-image text answer on a fast CPU to a tiled image on a slow board.
_LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Metrics:
    def __init__(self, runners: Callable[[], dict]):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mmedge_requests", "Requests answered, by model, endpoint and "
                                "HTTP status.", ["model", "endpoint", "status"], registry=r)
        self.rejected = Counter("mmedge_rejected_requests", "Requests refused with 429 because the "
                                "model's queue was full.", ["model"], registry=r)
        self.ttft = Histogram("mmedge_time_to_first_token_seconds", "From the request to the "
                              "first generated token.", ["model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.latency = Histogram("mmedge_request_duration_seconds", "From the request to its last "
                                 "byte.", ["model", "endpoint"], buckets=_LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("mmedge_prompt_tokens", "Prompt tokens (image tokens "
                                     "included).", ["model"], registry=r)
        self.reused_tokens = Counter("mmedge_reused_prompt_tokens", "Prompt tokens a slot's KV "
                                     "cache already held (not prefilled again).", ["model"], registry=r)
        self.generated_tokens = Counter("mmedge_generated_tokens", "Tokens generated.", ["model"],
                                        registry=r)
        self.decode_speed = Gauge("mmedge_decode_tokens_per_second", "Decode speed of the model's "
                                  "last generation.", ["model"], registry=r)
        self.cancelled = Counter("mmedge_cancelled_generations", "Generations stopped early: the "
                                 "client went away or the time limit passed.", ["model", "reason"],
                                 registry=r)
        waiting = Gauge("mmedge_queue_length", "Requests accepted and waiting for a worker.",
                        ["model"], registry=r)
        running = Gauge("mmedge_running_requests", "Requests a worker is on now.", ["model"], registry=r)
        self._gauges = (waiting, running)
        self._runners = runners

    def render(self) -> bytes:
        waiting, running = self._gauges
        for name, runner in self._runners().items():
            waiting.labels(name).set(runner.waiting)
            running.labels(name).set(runner.running)
        return generate_latest(self.registry)
