"""`POST /v1/chat/completions`: a generation run in one of the model's workers, answered as one
JSON object or as server-sent events, in OpenAI's shapes.

The worker (`generate_in_worker`) does everything that can fail before the first token inside
`Model.generate` and posts `start` only when the prompt was accepted, so a prompt that does not
fit, an image that is not one, or an image sent to a text-only model is an HTTP error status, not
a 200 stream that breaks. Then it posts one `chunk` per piece of text and `done` with the call's
statistics. The request's coroutine cancels the job when the client goes away or the time limit
passes; the worker stops before the next token and gives its KV cache back (kept warm: a next
turn that extends this conversation prefills only what is new, as in the Python API).

`finish_reason` is OpenAI's: "stop" (end of answer or a stop string) or "length" (max_tokens, or
the context, which also clamps a max_tokens larger than the room left: the response's `mmedge`
field then says `max_tokens_clamped_to`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Callable

from mmedge import __version__
from mmedge.errors import MMEdgeError
from mmedge.serve.chat_request import ChatRequest
from mmedge.serve.errors import ApiError, from_runtime
from mmedge.serve.runner import Job

__all__ = ["generate_in_worker", "completion", "event_stream"]

log = logging.getLogger("mmedge.serve")


def generate_in_worker(model: Any, request: ChatRequest, job: Job, received: float,
                       on_stop: Callable[[str], None] = lambda reason: None) -> None:
    """Run in a worker thread: the whole generation, reported through `job`'s events
    (`on_stop(reason)` when it stops early: "client" gone or "timeout")."""
    if job.cancelled.is_set():
        return
    if time.monotonic() > job.deadline:
        job.post("error", _timeout(job, received, "waiting for a free slot"))
        return
    called = time.monotonic()
    try:
        generation = model.generate(messages=request.messages, images=request.images, stream=True,
                                    max_new_tokens=request.max_tokens or model.context_length,
                                    **request.options)
    except MMEdgeError as e:
        job.post("error", from_runtime(e))
        return
    except Exception:   # noqa: BLE001 - logged here; the client gets a 500 without internals
        log.exception("generation failed before its first token")
        job.post("error", ApiError(500, "The model failed on this request; the server log has "
                                        "the details."))
        return
    job.post("start", called - received)
    stopped = None
    try:
        with generation:
            for chunk in generation:
                job.post("chunk", chunk)
                if job.cancelled.is_set():
                    stopped = "client"
                    break
                if time.monotonic() > job.deadline:
                    stopped = "timeout"
                    break
    except Exception:   # noqa: BLE001
        log.exception("generation failed")
        job.post("error", ApiError(500, "The model failed while answering; the server log has the "
                                        "details."))
        return
    if stopped:
        on_stop(stopped)
    job.post("done", (generation.stats, stopped))


def _timeout(job: Job, received: float, during: str) -> ApiError:
    return ApiError(504, f"The request ran out of time ({job.deadline - received:g} s, the "
                         f"server's --timeout) {during}.", code="timeout")


def finish_reason(stats: Any) -> str:
    return "stop" if stats.finish_reason == "stop" else "length"


def usage(stats: Any) -> dict[str, int]:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.new_tokens,
            "total_tokens": stats.prompt_tokens + stats.new_tokens}


def details(model: Any, request: ChatRequest, stats: Any, queued_s: float) -> dict[str, Any]:
    """mmedge's figures for one answer (an extra field OpenAI's clients keep and ignore)."""
    room = model.context_length - stats.prompt_tokens
    out = {"ttft_ms": round(queued_s * 1e3 + stats.ttft_ms, 1), "queued_ms": round(queued_s * 1e3, 1),
           "prefill_ms": round(stats.prefill_ms, 1), "decode_tok_s": round(stats.decode_tok_s, 1),
           "reused_prompt_tokens": stats.reused_tokens, "image_tokens": stats.image_tokens,
           "cached_images": stats.cached_images, "context_length": model.context_length}
    if request.max_tokens is None or request.max_tokens > room:
        out["max_tokens_clamped_to"] = room
    return out


class Answer:
    """What one request's response needs besides the text."""

    def __init__(self, model_name: str, fingerprint: str):
        self.id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        self.created = int(time.time())
        self.model, self.fingerprint = model_name, fingerprint

    def head(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint}


def fingerprint(model: Any) -> str:
    """Which build answered: mmedge's version and the decoder graph's checksum."""
    files = model.bundle.manifest.get("files", {})
    decoder = model.bundle.components.get("decoder", {}).get("file")
    digest = files.get(decoder, {}).get("sha256", "")[:12]
    return f"mmedge-{__version__}-{digest}"


async def completion(job: Job, answer: Answer, model: Any, request: ChatRequest, queued_s: float,
                     next_event) -> tuple[dict[str, Any], Any]:
    """The non-streaming response, once the job is done, and the call's statistics."""
    text = []
    while True:
        kind, value = await next_event()
        if kind == "chunk":
            text.append(value)
        elif kind == "error":
            raise value
        elif kind == "done":
            stats, stopped = value
            if stopped == "timeout":
                raise ApiError(504, f"The answer did not finish within the server's time limit "
                                    f"({stats.new_tokens} tokens generated); ask for fewer "
                                    "tokens (max_tokens) or raise --timeout.", code="timeout")
            body = {**answer.head("chat.completion"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                                 "finish_reason": finish_reason(stats), "logprobs": None}],
                    "usage": usage(stats), "mmedge": details(model, request, stats, queued_s)}
            return body, stats


async def event_stream(job: Job, answer: Answer, model: Any, request: ChatRequest,
                       queued_s: float, on_done) -> AsyncIterator[bytes]:
    """The streaming response: OpenAI's `chat.completion.chunk` events, `data: [DONE]` last."""
    extra = {"usage": None} if request.include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        body = {**answer.head("chat.completion.chunk"),
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                **extra}
        return _event(body)

    try:
        yield chunk({"role": "assistant", "content": ""})
        while True:
            kind, value = await job.events.get()
            if kind == "chunk":
                yield chunk({"content": value})
            elif kind == "error":
                yield _event(value.body())
                break
            elif kind == "done":
                stats, stopped = value
                on_done(stats)
                if stopped == "timeout":
                    yield _event(ApiError(504, "The answer did not finish within the server's time "
                                               "limit; ask for fewer tokens (max_tokens) or raise "
                                               "--timeout.", code="timeout").body())
                    break
                yield chunk({}, finish_reason(stats))
                if request.include_usage:
                    yield _event({**answer.head("chat.completion.chunk"), "choices": [],
                                  "usage": usage(stats),
                                  "mmedge": details(model, request, stats, queued_s)})
                break
        yield b"data: [DONE]\n\n"
    finally:
        job.cancel()   # a no-op once done; a client that left stops the worker at the next token


def _event(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, ensure_ascii=False).encode() + b"\n\n"
