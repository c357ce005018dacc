"""`mmedge run` (one prompt, streamed) and `mmedge chat` (a conversation in the terminal)."""

from __future__ import annotations

import argparse
import sys

from mmedge.cli.common import add_generation_args, add_parser, generation_kwargs, load_bundle

RUN_EXAMPLES = """examples:
  mmedge run tiny-vlm/ --image scene.png --prompt "What colour is the star?"
  mmedge run smollm2/ -p "Write a haiku about robots." --temperature 0.7 --seed 1
  mmedge run llava/ -i left.jpg -i right.jpg -p "What changed?" --stats
"""


def register(sub) -> dict:
    p = add_parser(sub, "run", "answer one prompt, streaming", RUN_EXAMPLES)
    p.add_argument("bundle")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-i", "--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--stats", action="store_true", help="print stage timings afterwards")
    add_generation_args(p)

    from mmedge.cli.chat import CHAT_HELP

    p = add_parser(sub, "chat", "multi-turn chat in the terminal (/image PATH, /reset, /quit)",
                   CHAT_HELP)
    p.add_argument("bundle")
    add_generation_args(p)
    return {"run": cmd_run, "chat": cmd_chat}


def cmd_run(args: argparse.Namespace) -> None:
    from mmedge.vision.image import load_image

    images = [load_image(path) for path in args.image]
    model = load_bundle(args)
    for chunk in model.generate(args.prompt, images, system=args.system, stream=True,
                                **generation_kwargs(args)):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        from mmedge.evaluation.speed import format_stats

        print(format_stats(model.last_stats), file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    from mmedge.cli.chat import chat_loop

    chat_loop(load_bundle(args), system=args.system, **generation_kwargs(args))
