"""Where a served model's work runs: a few worker threads of its own and a bounded queue in front
of them.

ONNX Runtime calls block, so a model's work runs in threads, never on the event loop. A chat model
gets `parallel` workers (each generation holds one of the model's KV caches for its whole length,
so a worker that runs one generation to its end never waits on the cache pool); a CLIP model gets
one (its embedding cache is not shared across threads). Work that finds every worker busy waits
in a queue of `queue_size`; past that the request is refused at once with 429 and Retry-After,
which is what a client can act on, instead of piling up until every request times out.

`Job` is one request's work as the event loop sees it: the worker posts events (`start`, `chunk`,
`done`, `error`) into an asyncio queue, and the loop can `cancel()` it (client gone, time up);
the worker checks between tokens and gives the slot back.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from mmedge.serve.errors import ApiError

__all__ = ["Job", "Runner"]


class Job:
    """One request's work: events out of the worker thread, a cancel flag into it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float):
        self._loop = loop
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.deadline = deadline                 # time.monotonic() past which it stops
        self.cancelled = threading.Event()

    def post(self, kind: str, value: Any = None) -> None:
        """From the worker thread: hand an event to the request's coroutine."""
        try:
            self._loop.call_soon_threadsafe(self.events.put_nowait, (kind, value))
        except RuntimeError:   # the loop has closed (server shutting down): nobody is listening
            self.cancelled.set()

    def cancel(self) -> None:
        self.cancelled.set()


class Runner:
    """A served model's worker threads and the queue in front of them."""

    def __init__(self, name: str, workers: int, queue_size: int):
        self.name, self.workers, self.queue_size = name, workers, queue_size
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"mmedge-{name}")
        self._lock = threading.Lock()
        self.running = 0      # work a worker is on now
        self.waiting = 0      # accepted work no worker has started yet

    def submit(self, work: Callable[[], None]) -> None:
        """Queue `work` (run in a worker thread), or refuse it with 429 when the queue is full."""
        with self._lock:
            if self.running + self.waiting >= self.workers + self.queue_size:
                raise ApiError(429, f"Model '{self.name}' is busy: {self.running} request(s) running "
                                    f"and {self.waiting} waiting, the most it queues. Retry after "
                                    "a moment.", code="queue_full", headers={"Retry-After": "1"})
            self.waiting += 1
        self._pool.submit(self._run, work)

    def _run(self, work: Callable[[], None]) -> None:
        with self._lock:
            self.waiting -= 1
            self.running += 1
        try:
            work()
        finally:
            with self._lock:
                self.running -= 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
