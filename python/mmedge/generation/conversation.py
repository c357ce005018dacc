"""A conversation kept across turns: messages, the images each message carries, and the rule for
when the history outgrows the model's context.

The model itself keeps the previous turn's KV cache and the images' features (see
mmedge.generation.model), so sending the whole conversation again each turn costs only what is
new. What cannot be kept is a history longer than the context: `fit` drops the oldest turns
(a user message and the answer to it, with their images), never the system prompt, and says how
many it dropped, so a long chat goes on instead of failing every later turn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mmedge.errors import PromptError

__all__ = ["Conversation"]


@dataclass
class Conversation:
    system: str | None = None
    messages: list[dict[str, Any]] = field(default_factory=list)   # user/assistant turns
    images: list[list[Any]] = field(default_factory=list)          # the images of each message

    def add_user(self, text: str, images: list[Any] = ()) -> None:
        images = list(images)
        content: Any = ([{"type": "image"} for _ in images] + [{"type": "text", "text": text}]
                        if images else text)
        self.messages.append({"role": "user", "content": content})
        self.images.append(images)

    def add_assistant(self, text: str) -> None:
        self.messages.append({"role": "assistant", "content": text})
        self.images.append([])

    def pop(self) -> None:
        """Forget the last message (a turn that failed)."""
        self.messages.pop()
        self.images.pop()

    def reset(self) -> None:
        self.messages.clear()
        self.images.clear()

    def all_messages(self) -> list[dict[str, Any]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.messages

    def all_images(self) -> list[Any]:
        return [image for images in self.images for image in images]

    def fit(self, model, max_new_tokens: int) -> int:
        """Drop the oldest turns until the conversation plus `max_new_tokens` (at least a few
        tokens of answer) fits `model`'s context. Returns how many messages were dropped; raises
        PromptError when even the last message alone does not fit."""
        want = min(max_new_tokens, 16)   # room for at least the start of an answer
        dropped = 0
        while model.count_tokens(self.all_messages(), self.all_images()) + want > model.context_length:
            if len(self.messages) <= 1:
                raise PromptError(f"The message is too long for the model's context "
                                  f"({model.context_length} tokens); shorten it or attach fewer images.")
            # A turn is a user message and the reply to it; templates expect user first.
            cut = 2 if len(self.messages) > 2 and self.messages[1]["role"] == "assistant" else 1
            del self.messages[:cut], self.images[:cut]
            dropped += cut
        return dropped
