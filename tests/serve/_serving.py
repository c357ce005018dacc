"""Helpers of the server tests: real uvicorn servers on a loopback port in a thread of the test
process, and the images the requests carry."""

from __future__ import annotations

import base64
import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

import mmedge.serve


def scene_png(index: int = 0) -> bytes:
    """Held-out generated scene `index` (the tiny VLM answers questions about these), as PNG bytes."""
    import io

    from mmedge.evaluation.scenes import HELD_OUT_SEED, scene

    out = io.BytesIO()
    scene(index, HELD_OUT_SEED).image.save(out, format="PNG")
    return out.getvalue()


def free_port() -> int:
    """A loopback port nothing listens on now (for a server in another process)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server on 127.0.0.1 in a background thread, serving `app`."""

    def __init__(self, app):
        self.app = app
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        daemon=True)

    def start(self, ready: bool = True, timeout: float = 120.0) -> "Server":
        import httpx

        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                status = httpx.get(self.url + "/health", timeout=2).status_code
                if status == 200 or (not ready and status == 503):
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"the server at {self.url} was not ready in {timeout} s")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self._socket.close()


@contextmanager
def serving(models, **options):
    server = Server(mmedge.serve.app(models, **options)).start()
    try:
        yield server
    finally:
        server.stop()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()
