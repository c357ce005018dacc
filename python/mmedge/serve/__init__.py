"""`mmedge serve`: an OpenAI-compatible HTTP server for the bundles on this device.

    import mmedge.serve, uvicorn
    app = mmedge.serve.app(["tiny-vlm/", "clip/"], parallel=2, api_key="secret")
    uvicorn.run(app, host="127.0.0.1", port=8080)        # or: mmedge serve tiny-vlm/ clip/

Endpoints: POST /v1/chat/completions (text and images, streaming), POST /v1/embeddings (CLIP/SigLIP
bundles: texts and images), GET /v1/models, GET /health (503 until every bundle is loaded),
GET /metrics (Prometheus), GET / (a page to chat from a phone or laptop).

By module:
    asgi.py          routes, authentication, CORS, body limit, OpenAI-shaped error bodies
    registry.py      the served bundles by name, loaded in the background
    runner.py        each model's worker threads and the bounded queue in front of them
    chat_request.py  a chat request checked and turned into Model.generate's arguments
    image_urls.py    data URLs (and allowed local paths) to image bytes; remote URLs refused
    chat.py          a generation in a worker, answered as JSON or server-sent events
    embeddings.py    the embeddings request and response
    metrics.py       the Prometheus figures
    static/          the page

Needs the `serve` extra (`pip install mmedge[serve]`: starlette, uvicorn, prometheus-client).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mmedge.errors import MMEdgeError

__all__ = ["app", "run", "DEFAULT_HOST", "DEFAULT_PORT"]

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 8080


def app(models: Mapping[str, Any] | Sequence[Any], *, parallel: int = 1, queue_size: int = 8,
        timeout: float = 300.0, api_key: str | None = None, cors: Sequence[str] = (),
        allow_paths: Sequence[str | Path] = (), max_body_bytes: int = 32 << 20,
        device: str = "auto", threads: int | None = None,
        on_load_failure: Callable[[str], None] | None = None):
    """The ASGI app serving `models`: bundle folders (named after the folder), {name: folder}, or
    models already loaded with `mmedge.load` (served as they are). Bundles load in the background
    once the app starts; /health says when they are in.

    `parallel`: generations at once per chat model, each with its own KV cache; `queue_size`
    more may wait, further requests get 429 with Retry-After. `timeout`: seconds a request may
    take, waiting included. `api_key`: required as `Authorization: Bearer KEY` on /v1/ and
    /metrics. `cors`: origins allowed to call from a browser (none by default). `allow_paths`:
    folders whose files a request may name as images (none by default: data URLs only).
    """
    try:
        from mmedge.serve.asgi import create_app
    except ImportError as e:
        raise MMEdgeError(f"`mmedge serve` needs the serve extra ({e.name} is missing): "
                          "pip install 'mmedge[serve]'.") from None
    import mmedge

    def load(path):
        return mmedge.load(path, device=device, threads=threads, parallel=parallel)

    return create_app(models, parallel=parallel, queue_size=queue_size, timeout=timeout,
                      api_key=api_key, cors=cors, allow_paths=allow_paths,
                      max_body_bytes=max_body_bytes, load=load, on_load_failure=on_load_failure)


def run(asgi_app, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, log_level: str = "info") -> None:
    """Serve `asgi_app` with uvicorn until Ctrl-C."""
    import uvicorn

    uvicorn.run(asgi_app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
