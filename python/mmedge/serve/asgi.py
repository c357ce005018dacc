"""The ASGI app: routes, authentication, CORS, body limits and error bodies (see mmedge.serve).

Starlette, not FastAPI: FastAPI is Starlette plus request models and generated docs, and pulls
in pydantic; a device server gains nothing from either (the request shapes are OpenAI's,
checked by hand with OpenAI's error messages in chat_request.py and embeddings.py), and the
smaller stack installs and starts faster on a board. uvicorn serves it (mmedge.serve.run).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from mmedge.serve import chat, embeddings
from mmedge.serve.chat_request import parse_chat_request
from mmedge.serve.errors import ApiError, error_body
from mmedge.serve.metrics import CONTENT_TYPE_LATEST, Metrics
from mmedge.serve.registry import Registry, served_names
from mmedge.serve.runner import Job

__all__ = ["create_app"]

log = logging.getLogger("mmedge.serve")
STATIC = Path(__file__).parent / "static"
_PROTECTED = ("/v1/", "/metrics")      # what --api-key guards; /health and the page stay open


class _ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


def create_app(models: Mapping[str, Any] | Sequence[Any], *, parallel: int = 1, queue_size: int = 8,
               timeout: float = 300.0, api_key: str | None = None, cors: Sequence[str] = (),
               allow_paths: Sequence[str | Path] = (), max_body_bytes: int = 32 << 20,
               load: Callable[[Any], Any] | None = None,
               on_load_failure: Callable[[str], None] | None = None) -> Starlette:
    if not isinstance(parallel, int) or parallel < 1:
        raise ValueError(f"parallel must be a whole number >= 1, not {parallel!r}")
    if not isinstance(queue_size, int) or queue_size < 0:
        raise ValueError(f"queue_size must be a whole number >= 0, not {queue_size!r}")
    if load is None:
        import mmedge

        def load(path):
            return mmedge.load(path, parallel=parallel)
    registry = Registry(served_names(models), parallel=parallel, queue_size=queue_size, load=load)
    allowed = [Path(p).resolve() for p in allow_paths]
    metrics = Metrics(registry.runners)

    async def read_json(request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
            raise _too_large(max_body_bytes)
        body = bytearray()
        async for piece in request.stream():
            body += piece
            if len(body) > max_body_bytes:
                raise _too_large(max_body_bytes)
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ApiError(400, f"The request body is not valid JSON ({type(e).__name__}: "
                                f"{str(e)[:120]}).", code="invalid_json") from None

    async def next_event(job: Job, request: Request) -> tuple[str, Any]:
        """The job's next event, noticing meanwhile a client that has gone (then the job stops)."""
        while True:
            try:
                return await asyncio.wait_for(job.events.get(), timeout=0.25)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    job.cancel()
                    raise _ClientGone() from None

    def counted(endpoint: str):
        """A handler whose outcome is counted in `mmedge_requests` (499: the client went away)."""
        def wrap(handler):
            async def counted_handler(request: Request) -> Response:
                outcome = "500"
                try:
                    response = await handler(request, time.monotonic())
                    outcome = str(response.status_code)
                    return response
                except ApiError as e:
                    outcome = str(e.status)
                    raise
                except _ClientGone:
                    outcome = "499"
                    return Response(status_code=499)
                finally:
                    metrics.requests.labels(getattr(request.state, "model", "-"), endpoint, outcome).inc()
            return counted_handler
        return wrap

    async def start(served, job: Job, work: Callable[[], None], request: Request) -> Any:
        """Queue `work` on the model's runner and wait for its first event (an error raised)."""
        try:
            served.runner.submit(work)
        except ApiError:
            metrics.rejected.labels(served.name).inc()
            raise
        kind, value = await next_event(job, request)
        if kind == "error":
            raise value
        return value

    @counted("chat")
    async def chat_completions(request: Request, received: float) -> Response:
        parsed = parse_chat_request(await read_json(request), allowed)
        served = registry.pick(parsed.model, "chat")
        request.state.model = served.name
        job = Job(asyncio.get_running_loop(), received + timeout)

        def stopped(reason: str) -> None:
            metrics.cancelled.labels(served.name, reason).inc()

        queued_s = await start(served, job, lambda: chat.generate_in_worker(
            served.model, parsed, job, received, stopped), request)
        answer = chat.Answer(served.name, chat.fingerprint(served.model))

        def done(stats):
            _count(served.name, stats, queued_s)
            metrics.latency.labels(served.name, "chat").observe(time.monotonic() - received)

        if parsed.stream:
            stream = chat.event_stream(job, answer, served.model, parsed, queued_s, done)
            return StreamingResponse(stream, media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        body, stats = await chat.completion(job, answer, served.model, parsed, queued_s,
                                            lambda: next_event(job, request))
        done(stats)
        return JSONResponse(body)

    def _count(name: str, stats: Any, queued_s: float) -> None:
        metrics.prompt_tokens.labels(name).inc(stats.prompt_tokens)
        metrics.reused_tokens.labels(name).inc(stats.reused_tokens)
        metrics.generated_tokens.labels(name).inc(stats.new_tokens)
        if stats.new_tokens:
            metrics.ttft.labels(name).observe(queued_s + stats.ttft_ms / 1e3)
        if stats.decode_tok_s:
            metrics.decode_speed.labels(name).set(stats.decode_tok_s)

    @counted("embeddings")
    async def create_embeddings(request: Request, received: float) -> Response:
        parsed = embeddings.parse_embedding_request(await read_json(request), allowed)
        served = registry.pick(parsed.model, "embeddings")
        request.state.model = served.name
        job = Job(asyncio.get_running_loop(), received + timeout)

        def work():
            if job.cancelled.is_set():
                return
            try:
                job.post("done", embeddings.embed(served.model, parsed))
            except Exception as e:   # noqa: BLE001 - an MMEdgeError is the client's; others are logged
                job.post("error", _runtime_error(e, "input"))

        vectors, tokens = await start(served, job, work, request)
        metrics.latency.labels(served.name, "embeddings").observe(time.monotonic() - received)
        return JSONResponse(embeddings.response(served.name, parsed, vectors, tokens))

    async def list_models(request: Request) -> Response:
        return JSONResponse({"object": "list",
                             "data": [s.describe() for s in registry.models.values()]})

    async def health(request: Request) -> Response:
        states = {name: ("ready" if s.model is not None else "error" if s.error else "loading")
                  for name, s in registry.models.items()}
        status = "ok" if registry.ready else "error" if registry.failed else "loading"
        return JSONResponse({"status": status, "models": states},
                            status_code=200 if status == "ok" else 503)

    async def metrics_page(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8",
                            headers={"Cache-Control": "no-cache"})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        threading.Thread(target=registry.load_all, args=(on_load_failure,), name="mmedge-load",
                         daemon=True).start()
        yield
        registry.close()

    middleware = []
    if cors:   # outermost, so a browser's preflight OPTIONS is answered before authentication
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(cors),
                                     allow_methods=["GET", "POST", "OPTIONS"],
                                     allow_headers=["Authorization", "Content-Type"]))
    if api_key:
        middleware.append(Middleware(_BearerAuth, key=api_key))
    app = Starlette(
        routes=[Route("/v1/chat/completions", chat_completions, methods=["POST"]),
                Route("/v1/embeddings", create_embeddings, methods=["POST"]),
                Route("/v1/models", list_models, methods=["GET"]),
                Route("/health", health, methods=["GET"]),
                Route("/metrics", metrics_page, methods=["GET"]),
                Route("/", page, methods=["GET"]),
                Mount("/static", StaticFiles(directory=STATIC), name="static")],
        middleware=middleware, lifespan=lifespan,
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error})
    app.state.registry = registry
    app.state.metrics = metrics
    return app


def _too_large(limit: int) -> ApiError:
    return ApiError(413, f"The request body is larger than this server takes ({limit >> 20} MB, "
                         "--max-body-mb); send smaller or fewer images.", code="request_too_large")


def _runtime_error(error: Exception, param: str) -> ApiError:
    from mmedge.errors import MMEdgeError
    from mmedge.serve.errors import from_runtime

    if isinstance(error, MMEdgeError):
        return from_runtime(error, param)
    log.error("request failed", exc_info=error)
    return ApiError(500, "The model failed on this request; the server log has the details.")


class _BearerAuth:
    """`Authorization: Bearer KEY` on /v1/ and /metrics, compared in constant time."""

    def __init__(self, app, key: str):
        self.app, self._key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith(_PROTECTED) and scope["method"] != "OPTIONS":
            header = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, given = header.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._key):
                message = ("Missing API key: send the header Authorization: Bearer <key>." if not header
                           else "Invalid API key.")
                response = JSONResponse(error_body(401, message, code="invalid_api_key"),
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _api_error(request: Request, error: ApiError) -> Response:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _http_error(request: Request, error: HTTPException) -> Response:
    message = {404: f"No such endpoint: {request.method} {request.url.path}.",
               405: f"{request.method} is not allowed on {request.url.path}."}.get(
        error.status_code, str(error.detail))
    return JSONResponse(error_body(error.status_code, message), status_code=error.status_code,
                        headers=getattr(error, "headers", None))


async def _internal_error(request: Request, error: Exception) -> Response:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return JSONResponse(error_body(500, "Internal server error; the server log has the details."),
                        status_code=500)
