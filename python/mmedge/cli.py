"""The `mmedge` command line: export, run, chat, info, bench.

Every command but `export` uses only the runtime (no torch). Errors a user can fix are printed as
one message (no traceback) with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Sequence

from . import __version__
from .errors import MMEdgeError

EPILOG = """examples:
  mmedge export HuggingFaceTB/SmolLM2-135M-Instruct -o smollm2/ --quant int4
  mmedge export ./llava-folder -o llava/              # local Hugging Face folder
  mmedge export model.gguf -o bundle/                 # GGUF (dequantized, then re-exported)
  mmedge run llava/ --image photo.jpg --prompt "What is in front of me?"
  mmedge chat llava/                                  # /image PATH attaches an image
  mmedge info llava/
  mmedge bench llava/ --image photo.jpg --json
"""


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run (default: auto = CUDA if available, else CPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable)")
    p.add_argument("--system", default=None, help="system prompt")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mmedge", description="Run small vision-language models on this device.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mmedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a Hugging Face model or GGUF file to a bundle",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="hub id (owner/name), local HF folder, or .gguf file")
    p.add_argument("-o", "--output", required=True, help="bundle folder to write")
    p.add_argument("--quant", default="fp32", choices=["fp32", "fp16", "int8", "int4"],
                   help="decoder precision (default fp32; int4 is fastest on CPUs)")
    p.add_argument("--vision-quant", default="fp32", choices=["fp32", "fp16", "int8"],
                   help="vision graph precision (default fp32)")
    p.add_argument("--no-parity", action="store_true", help="skip the parity check vs torch")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle")

    p = sub.add_parser("run", help="answer one prompt, streaming",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("bundle")
    p.add_argument("-p", "--prompt", required=True)
    p.add_argument("-i", "--image", action="append", default=[], help="image file (repeatable)")
    p.add_argument("--stats", action="store_true", help="print stage timings afterwards")
    _add_generation_args(p)

    p = sub.add_parser("chat", help="multi-turn chat in the terminal (/image PATH, /reset, /quit)")
    p.add_argument("bundle")
    _add_generation_args(p)

    p = sub.add_parser("info", help="what a bundle holds: graphs, shapes, precision, checksums")
    p.add_argument("bundle")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("bench", help="per-stage timings and memory of a bundle")
    p.add_argument("bundle")
    p.add_argument("-i", "--image", default=None, help="image file (default: a synthetic 640x480 "
                                                       "frame for vision bundles)")
    p.add_argument("-p", "--prompt", default=None)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", action="store_true")
    return parser


def _generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop=args.stop)


def _load(args: argparse.Namespace):
    from .model import load

    model = load(args.bundle, device=args.device, threads=args.threads)
    print(f"[mmedge] {model.device.note}", file=sys.stderr)
    return model


def cmd_export(args: argparse.Namespace) -> None:
    try:
        from mmedge.export import export_model
    except ImportError as e:
        raise MMEdgeError(f"Exporting needs the export extra ({e.name} is missing): "
                          f"pip install 'mmedge[export]'") from None
    manifest = export_model(args.model, args.output, precision=args.quant,
                            vision_precision=args.vision_quant, parity=not args.no_parity,
                            overwrite=args.overwrite)
    parity = manifest["exporter"].get("parity")
    print(f"wrote {args.output} ({manifest['family']}, decoder {args.quant})")
    if parity:
        print(f"parity vs torch: max logit diff {parity['max_logit_diff']:.3g}, greedy tokens "
              f"{parity['greedy_tokens_agreeing']}/{parity['greedy_tokens_compared']} identical")


def cmd_run(args: argparse.Namespace) -> None:
    from .image import load_image

    images = [load_image(path) for path in args.image]
    model = _load(args)
    for chunk in model.generate(args.prompt, images, system=args.system, stream=True,
                                **_generation_kwargs(args)):
        sys.stdout.write(chunk)
        sys.stdout.flush()
    sys.stdout.write("\n")
    if args.stats:
        from .benchmark import format_stats

        print(format_stats(model.last_stats), file=sys.stderr)


def cmd_chat(args: argparse.Namespace) -> None:
    from .chat import chat_loop

    chat_loop(_load(args), system=args.system, **_generation_kwargs(args))


def cmd_info(args: argparse.Namespace) -> None:
    from .info import bundle_info, format_info

    info = bundle_info(args.bundle)
    print(json.dumps(info, indent=2) if args.json else format_info(info))


def cmd_bench(args: argparse.Namespace) -> None:
    from .benchmark import bench_bundle, format_bench

    result = bench_bundle(args.bundle, image=args.image, prompt=args.prompt,
                          new_tokens=args.new_tokens, runs=args.runs, device=args.device,
                          threads=args.threads)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))


COMMANDS = {"export": cmd_export, "run": cmd_run, "chat": cmd_chat, "info": cmd_info,
            "bench": cmd_bench}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except MMEdgeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
