"""The `mmedge` command line, one module per command group:

    export.py    export                      (the only command that needs torch)
    generate.py  run, chat                   (chat.py: the terminal conversation loop)
    inspect.py   info, bench                 (info.py: what a bundle holds)
    clip.py      classify, embed, index, search
    evaluate.py  eval
    common.py    options and loading shared by every command

Errors a user can fix are printed as one message on a line of its own (no traceback), exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from mmedge import __version__
from mmedge.cli import clip, evaluate, export, generate, inspect
from mmedge.cli.common import EXAMPLES
from mmedge.errors import MMEdgeError

__all__ = ["main", "build_parser"]


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Callable]]:
    """The parser and, for each command name, the function that runs it."""
    parser = argparse.ArgumentParser(
        prog="mmedge", description="Run small vision-language models on this device.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"mmedge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: dict[str, Callable] = {}
    for group in (export, generate, inspect, clip, evaluate):
        commands.update(group.register(sub))
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    try:
        commands[args.command](args)
    except MMEdgeError as e:
        print(f"\nerror: {e}" if _progress_bar_on_line() else f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def _progress_bar_on_line() -> bool:
    """Whether a progress bar may have left the terminal's cursor mid-line (tqdm draws on stderr
    with a carriage return and no newline), so an error must start on a fresh line."""
    try:
        from tqdm import tqdm
    except ImportError:
        return False
    return bool(getattr(tqdm, "_instances", None)) and sys.stderr.isatty()
