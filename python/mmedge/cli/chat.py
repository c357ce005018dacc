"""`mmedge chat`: a multi-turn conversation in the terminal, with images attachable.

Commands typed at the prompt: `/image PATH` attaches an image to the next message, `/reset`
forgets the conversation, `/quit` (or Ctrl-D) leaves. Each turn sends the whole conversation, but
the model keeps the previous turn's KV cache and the images' features, so only the new message is
prefilled; when the history outgrows the context the oldest turns are dropped, with a notice.
"""

from __future__ import annotations

import sys
from typing import Any

from mmedge.errors import MMEdgeError
from mmedge.generation.conversation import Conversation
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
    conversation = Conversation(system=system)
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
            conversation.reset()
            pending = []
            print("(conversation cleared)", file=sys.stderr)
            continue
        if line.startswith("/image"):
            path = line[len("/image"):].strip()
            if not model.accepts_images:
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
        conversation.add_user(line, pending)
        pending = []
        try:
            dropped = conversation.fit(model, generation.get("max_new_tokens", 256))
            if dropped:
                print(f"(the conversation outgrew the model's context: dropped the oldest "
                      f"{dropped} message(s))", file=sys.stderr)
            print("assistant> ", end="", flush=True)
            reply = ""
            for chunk in model.generate(messages=conversation.all_messages(),
                                        images=conversation.all_images(), stream=True, **generation):
                reply += chunk
                print(chunk, end="", flush=True)
        except MMEdgeError as e:
            print(f"\nerror: {e}", file=sys.stderr)
            conversation.pop()
            continue
        print()
        conversation.add_assistant(reply)
