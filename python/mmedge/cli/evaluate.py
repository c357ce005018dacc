"""`mmedge eval`: accuracy of a VLM or CLIP bundle on held-out generated scenes."""

from __future__ import annotations

import argparse
import json

from mmedge.cli.common import add_device_args, add_parser, load_any
from mmedge.errors import MMEdgeError

EVAL_EXAMPLES = """examples:
  mmedge export mmedge-tiny-vlm -o tiny-vlm/ && mmedge eval tiny-vlm/ --scenes 50
  mmedge export mmedge-tiny-clip -o tiny-clip/ && mmedge eval tiny-clip/ --scenes 500 --json
  mmedge eval tiny-vlm/ --answers answers.jsonl    # every question, reference and answer

VLMs: exact-match accuracy per question kind (colour, shape, count, position, word).
CLIP/SigLIP: zero-shot accuracy (colour, shape, count) and text-to-image recall@1/@5.
The scenes come from mmedge.scenes' held-out series: the same on every machine."""


def register(sub) -> dict:
    p = add_parser(sub, "eval", "accuracy on held-out generated scenes (any VLM or CLIP bundle)",
                   EVAL_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("--scenes", type=int, default=50, help="held-out scenes to grade (default 50)")
    p.add_argument("--answers", default=None, metavar="JSONL",
                   help="VLMs: write each question, its reference answer and the model's to this file")
    p.add_argument("--json", action="store_true")
    add_device_args(p)
    return {"eval": cmd_eval}


def cmd_eval(args: argparse.Namespace) -> None:
    from mmedge.evaluation.quality import evaluate_bundle, format_figures

    if args.scenes < 1:
        raise MMEdgeError("--scenes must be at least 1.")
    model = load_any(args)
    figures = evaluate_bundle(model, args.scenes, answers_path=args.answers)
    print(json.dumps(figures, indent=2) if args.json else format_figures(figures))
