"""What every `mmedge` command shares: the device/threads and generation options, loading a
bundle for a command, and the examples shown by `--help`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mmedge.errors import MMEdgeError

EXAMPLES = """examples:
  mmedge export HuggingFaceTB/SmolLM2-135M-Instruct -o smollm2/ --quant int4
  mmedge export ./llava-folder -o llava/              # local Hugging Face folder
  mmedge export model.gguf -o bundle/                 # GGUF (dequantized, then re-exported)
  mmedge run llava/ --image photo.jpg --prompt "What is in front of me?"
  mmedge chat llava/                                  # /image PATH attaches an image
  mmedge info llava/
  mmedge bench llava/ --image photo.jpg --json
  mmedge export openai/clip-vit-base-patch32 -o clip/     # CLIP or SigLIP: image + text towers
  mmedge classify clip/ photo.jpg --labels "door,staircase,wall"
  mmedge embed clip/ photos/ -o photos.npy            # rows listed in photos.rows.txt
  mmedge index clip/ photos.sqlite photos/ && mmedge search clip/ photos.sqlite "a red door"
  mmedge export mmedge-tiny-vlm -o tiny-vlm/ --quant int4   # mmedge's own reference VLM
  mmedge eval tiny-vlm/ --scenes 50                   # accuracy on held-out generated scenes
  mmedge serve tiny-vlm/ tiny-clip/                   # OpenAI-compatible API + chat page on :8080
"""

# Commands that need a CLIP/SigLIP bundle; every other bundle command needs a (V)LM.
CLIP_COMMANDS = ("classify", "embed", "index", "search")


def add_parser(sub: Any, name: str, help: str, epilog: str = EXAMPLES) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                          epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)


def add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run (default: auto = CUDA if available, else CPU)")
    p.add_argument("--strict-device", action="store_true",
                   help="fail (exit 2) instead of falling back to the CPU when --device cuda "
                        "cannot be had")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")


def add_generation_args(p: argparse.ArgumentParser) -> None:
    add_device_args(p)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (repeatable)")
    p.add_argument("--system", default=None, help="system prompt")
    p.add_argument("--image-longest-edge", type=int, default=None, metavar="PX",
                   help="tiling models (SmolVLM): resize images to this longest edge before "
                        "tiling, instead of the checkpoint's (2048 for SmolVLM-256M); 1024 gives "
                        "at most 2x2 tiles + a global view, i.e. fewer image tokens and a faster answer")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="Qwen-VL: resize images to at most N pixels (multiples of 28 px; 32 for "
                        "Qwen3-VL) instead of the checkpoint's budget; each 28x28 (32x32) block is "
                        "one image token, so 200704 caps an image at 256 tokens (Qwen3-VL: 196)")


def generation_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                seed=args.seed, stop=args.stop)


def load_bundle(args: argparse.Namespace):
    """The bundle named by `args.bundle`, refused when it is the wrong kind for the command."""
    model = load_any(args)
    wants_clip = args.command in CLIP_COMMANDS
    if wants_clip != (model.bundle.family == "clip"):
        need = "a CLIP/SigLIP bundle" if wants_clip else "a language or vision-language model"
        raise MMEdgeError(f"`mmedge {args.command}` needs {need}; {args.bundle} holds a "
                          f"'{model.bundle.family}' model.")
    return model


def load_any(args: argparse.Namespace):
    """`mmedge.load` with the command's device options; says on stderr what runs, loudly when an
    explicit --device cuda fell back to the CPU."""
    import mmedge

    extra = {key: getattr(args, key) for key in ("image_longest_edge", "max_pixels")
             if getattr(args, key, None) is not None}
    model = mmedge.load(args.bundle, device=args.device, threads=args.threads,
                        strict_device=args.strict_device, **extra)
    if args.device == "cuda" and model.device.name != "cuda":
        print(f"warning: {model.device.note} (pass --strict-device to fail instead)", file=sys.stderr)
    else:
        print(f"[mmedge] {model.device.note}", file=sys.stderr)
    return model
