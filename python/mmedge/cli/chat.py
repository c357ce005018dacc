"""`mmedge chat`: a multi-turn conversation in the terminal, with images attachable.

Commands typed at the prompt: `/image PATH` attaches an image to the next message, `/reset`
forgets the conversation, `/quit` (or Ctrl-D) leaves. Each turn re-sends the whole conversation
(all images included) to the model, so earlier images stay in context.
"""

from __future__ import annotations

import sys
from typing import Any

from mmedge.errors import MMEdgeError
from mmedge.vision.image import load_image

HELP = "commands: /image PATH (attach to next message), /reset, /quit"

CHAT_HELP = """commands typed at the prompt:
  /image PATH   attach an image to your next message (vision-language bundles only)
  /reset        forget the conversation (the system prompt stays)
  /quit         leave (or Ctrl-D)

examples:
  mmedge chat tiny-vlm/
  mmedge chat smollm2/ --system "You are a terse assistant." --temperature 0.7 --seed 1
"""


def chat_loop(model, system: str | None = None, **generation: Any) -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    images: list[Any] = []
    pending: list[Any] = []
    print(f"mmedge chat: {HELP}", file=sys.stderr)
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return
        if not line:
            continue
        if line in ("/quit", "/exit"):
            return
        if line == "/reset":
            messages, images, pending = messages[:1] if system else [], [], []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            if not getattr(model, "accepts_images", False):
                print("error: this bundle is text-only; it cannot take images.", file=sys.stderr)
                continue
            try:
                pending.append(load_image(path))
                print(f"(attached {path})", file=sys.stderr)
            except MMEdgeError as e:
                print(f"error: {e}", file=sys.stderr)
            continue
        if line.startswith("/"):
            print(HELP, file=sys.stderr)
            continue
        content: Any = ([{"type": "image"} for _ in pending] + [{"type": "text", "text": line}]
                        if pending else line)
        turn = messages + [{"role": "user", "content": content}]
        print("assistant> ", end="", flush=True)
        try:
            reply = ""
            for chunk in model.generate(messages=turn, images=images + pending, stream=True,
                                        **generation):
                reply += chunk
                print(chunk, end="", flush=True)
        except MMEdgeError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            continue
        print()
        messages = turn + [{"role": "assistant", "content": reply}]
        images += pending
        pending = []
