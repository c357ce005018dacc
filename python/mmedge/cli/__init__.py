"""The `mmedge` command line, one module per command group:

    export.py    export                      (the only command that needs torch)
    generate.py  run, chat                   (chat.py: the terminal conversation loop)
    inspect.py   info, bench                 (info.py: what a bundle holds)
    clip.py      classify, embed, index, search
    evaluate.py  eval
    serve.py     serve                       (the HTTP server: mmedge.serve)
    common.py    options and loading shared by every command

Errors a user can fix are printed as one message on a line of its own (no traceback), exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from mmedge import __version__
from mmedge.cli import clip, evaluate, export, generate, inspect, serve
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
    for group in (export, generate, inspect, clip, evaluate, serve):
        commands.update(group.register(sub))
    return parser, commands


def main(argv: Sequence[str] | None = None) -> int:
    parser, commands = build_parser()
    args = parser.parse_args(argv)
    try:
        commands[args.command](args)
    except MMEdgeError as e:
        _close_progress_bars()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close_progress_bars()
        print("\ninterrupted", file=sys.stderr)
        return 130
    return 0


def _close_progress_bars() -> None:
    """Close the progress bars a failed command left open: tqdm draws a bar with a carriage return
    and no newline, so an error printed after it would land on the bar's line; closing it ends
    the line."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)
    for bar in list(getattr(tqdm, "_instances", ()) or ()):
        try:
            bar.close()
        except Exception:  # a bar of a library in a bad state must not hide the error
            pass
