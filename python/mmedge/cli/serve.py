"""`mmedge serve`: the OpenAI-compatible server (mmedge.serve) from the command line."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from mmedge.cli.common import add_parser
from mmedge.errors import MMEdgeError

SERVE_EXAMPLES = """examples:
  mmedge serve tiny-vlm/                              # http://127.0.0.1:8080, page at /
  mmedge serve tiny-vlm/ tiny-clip/ --parallel 2      # chat + embeddings, 2 generations at once
  mmedge serve vlm=tiny-vlm/ --host 0.0.0.0 --api-key "$KEY"   # on the LAN, with a key
  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"model": "tiny-vlm", "messages": [{"role": "user", "content": "Hello!"}]}'
"""


def register(sub) -> dict:
    p = add_parser(sub, "serve", "serve bundles over an OpenAI-compatible HTTP API, with a chat page",
                   SERVE_EXAMPLES)
    p.add_argument("bundles", nargs="+", metavar="[NAME=]BUNDLE",
                   help="bundle folders; each is served as its folder's name, or as NAME")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this device only; 0.0.0.0: the network)")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--parallel", type=int, default=1,
                   help="generations at once per chat model, each with its own KV cache (default 1)")
    p.add_argument("--queue", type=int, default=8, metavar="N",
                   help="requests that may wait for a busy model; more get 429 (default 8)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="S",
                   help="seconds a request may take, waiting included (default 300)")
    p.add_argument("--api-key", default=None,
                   help="require Authorization: Bearer KEY on /v1/ and /metrics "
                        "(default: $MMEDGE_API_KEY, if set)")
    p.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN call the API (repeatable; default: none)")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="let requests name image files under DIR (repeatable; default: data URLs only)")
    p.add_argument("--max-body-mb", type=int, default=32, help="largest request body (default 32)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="CPU threads per model (default: all cores)")
    return {"serve": cmd_serve}


def named_bundles(values: list[str]) -> dict[str, str] | list[str]:
    """[NAME=]BUNDLE arguments as {name: path} when any is named, else the paths."""
    if not any("=" in v and not os.path.exists(v) for v in values):
        return values
    named: dict[str, str] = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or os.path.exists(value):
            from mmedge.serve.registry import served_names
            name, path = next(iter(served_names([value]))), value
        if name in named:
            raise MMEdgeError(f"Two bundles are named '{name}'; give each its own NAME=.")
        named[name] = path
    return named


def cmd_serve(args: argparse.Namespace) -> None:
    import mmedge.serve

    for folder in args.allow_path:
        if not os.path.isdir(folder):
            raise MMEdgeError(f"--allow-path {folder}: no such folder.")
    if not 0 <= args.port <= 65535:
        raise MMEdgeError(f"--port {args.port}: a port is a number from 1 to 65535 (8080 by default).")
    if args.max_body_mb < 1 or args.parallel < 1 or args.queue < 0 or args.timeout <= 0:
        raise MMEdgeError("--max-body-mb and --parallel must be at least 1, --queue at least 0, "
                          "--timeout above 0.")
    key = args.api_key or os.environ.get("MMEDGE_API_KEY") or None
    if not _loopback(args.host) and not key:
        print(f"warning: listening on {args.host} without an API key: anyone who can reach this "
              "device can use its models. Pass --api-key KEY (or set MMEDGE_API_KEY).", file=sys.stderr)
    logging.basicConfig(level=logging.INFO, format="[mmedge] %(message)s")
    failures: list[str] = []
    server_box: list = []

    def failed(message: str) -> None:   # a bundle that cannot load stops the command, with why
        failures.append(message)
        if server_box:
            server_box[0].should_exit = True

    app = mmedge.serve.app(named_bundles(args.bundles), parallel=args.parallel, queue_size=args.queue,
                           timeout=args.timeout, api_key=key, cors=args.cors,
                           allow_paths=args.allow_path, max_body_bytes=args.max_body_mb << 20,
                           device=args.device, threads=args.threads, on_load_failure=failed)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info",
                                           timeout_graceful_shutdown=5))
    server_box.append(server)
    print(f"[mmedge] serving on http://{args.host}:{args.port}/ (page at /, API at /v1/); "
          "loading the bundles...", file=sys.stderr)
    server.run()
    if failures:
        raise MMEdgeError("could not load " + "; ".join(failures))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
