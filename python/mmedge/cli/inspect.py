"""`mmedge info` (what a bundle holds) and `mmedge bench` (how fast it runs here)."""

from __future__ import annotations

import argparse
import json

from mmedge.cli.common import add_device_args, add_parser
from mmedge.errors import MMEdgeError

INFO_EXAMPLES = """examples:
  mmedge info tiny-vlm/           # graphs, inputs/outputs, precision, sizes, parity at export
  mmedge info tiny-vlm/ --json    # the same as JSON, with every file's sha256
"""

BENCH_EXAMPLES = """examples:
  mmedge bench smollm2/                       # a default prompt, 64 new tokens, 3 runs
  mmedge bench tiny-vlm/ --image scene.png    # adds preprocess and vision-encode stages
  mmedge bench llava/ --runs 5 --new-tokens 128 --threads 2 --json
"""


def register(sub) -> dict:
    p = add_parser(sub, "info", "what a bundle holds: graphs, shapes, precision, checksums",
                   INFO_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")

    p = add_parser(sub, "bench", "per-stage timings and memory of a bundle", BENCH_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("-i", "--image", default=None, help="image file (default: a synthetic 640x480 "
                                                       "frame for vision bundles)")
    p.add_argument("-p", "--prompt", default=None)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    add_device_args(p)
    p.add_argument("--json", action="store_true")
    return {"info": cmd_info, "bench": cmd_bench}


def cmd_info(args: argparse.Namespace) -> None:
    from mmedge.cli.info import bundle_info, format_info

    info = bundle_info(args.bundle)
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_bench(args: argparse.Namespace) -> None:
    from mmedge.backend import resolve_device
    from mmedge.bundle import open_bundle
    from mmedge.evaluation.speed import bench_bundle, format_bench

    resolve_device(args.device, strict=args.strict_device)   # fails here, before any timing

    if open_bundle(args.bundle, verify=False).family == "clip":
        raise MMEdgeError("`mmedge bench` measures generation; it does not cover CLIP/SigLIP "
                          "bundles yet (time `mmedge embed` instead).")

    result = bench_bundle(args.bundle, image=args.image, prompt=args.prompt,
                          new_tokens=args.new_tokens, runs=args.runs, device=args.device,
                          threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
