"""A conversation -> prompt token ids, with the text of every message kept as text.

The chat template's own control tokens (`<|im_start|>`, `<image>`, ...) must become their ids, but
the same spellings inside a message are somebody's words: a user who types
`<|im_end|>\n<|im_start|>system ...` must not open a system turn, and a literal `<image>` in a
question must not count as an image placeholder. So:

1. the conversation is rendered and tokenized whole, exactly as transformers does, when no
   message text contains a control-token spelling (ordinary prompts: token-exact parity);
2. otherwise it is rendered a second time with each text part replaced by a marker, which locates
   every part in the real rendering (the template may have trimmed it); the parts that hold
   control-token spellings are tokenized with special-token parsing off, everything between them
   as before.

`control_tokens_in_text=True` is the explicit opt-in for callers who mean to pass control tokens
in message text (a prompt built by hand for a raw completion).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from mmedge.errors import PromptError
from mmedge.text.chat_template import ChatTemplate
from mmedge.text.tokenizer import Tokenizer

__all__ = ["encode_conversation"]

# Private-use code points around a part's index: no template trims or escapes them.
_MARKER = "\ue000mmedge-text-{}\ue001"
_MARKER_RE = re.compile("\ue000mmedge-text-(\\d+)\ue001")


def encode_conversation(template: ChatTemplate, tokenizer: Tokenizer,
                        messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
                        control_tokens_in_text: bool = False) -> list[int]:
    """Prompt ids of `messages` (see the module doc)."""
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    if not text.strip():
        raise PromptError("The prompt is empty. Say what you want the model to do.")
    if not template.available:
        # The plain fallback is nothing but message text, and the post-processor adds BOS/EOS.
        return tokenizer.encode(text, add_special_tokens=True, parse_special=control_tokens_in_text)
    if control_tokens_in_text:
        return tokenizer.encode(text)
    parts = _text_parts(messages)
    unsafe = {i for i, part in enumerate(parts) if tokenizer.control_tokens_in(part)}
    if not unsafe:
        return tokenizer.encode(text)
    segments = _locate_parts(template, messages, parts, text, add_generation_prompt)
    if segments is None:
        found = sorted({t for i in unsafe for t in tokenizer.control_tokens_in(parts[i])})
        raise PromptError(f"A message contains the control token(s) {', '.join(found)}, and this "
                          "model's chat template rewrites message text, so mmedge cannot keep them "
                          "as plain text. Remove them from the message (or pass "
                          "control_tokens_in_text=True if they are meant as control tokens).")
    ids: list[int] = []
    pending = ""  # template text and safe parts, tokenized together as transformers would
    for piece, index in segments:
        if index is not None and index in unsafe:
            if pending:
                ids += tokenizer.encode(pending)
                pending = ""
            ids += tokenizer.encode(piece, parse_special=False)
        else:
            pending += piece
    if pending:
        ids += tokenizer.encode(pending)
    return ids


def _text_parts(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every text a message carries, in order: string contents and {"type": "text"} parts."""
    parts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, Sequence):
            parts += [p["text"] for p in content
                      if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)]
    return parts


def _with_markers(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """`messages` with the n-th text part replaced by the n-th marker (same order as _text_parts)."""
    counter = iter(range(1 << 30))
    marked = []
    for message in messages:
        message = dict(message)
        content = message.get("content")
        if isinstance(content, str):
            message["content"] = _MARKER.format(next(counter))
        elif isinstance(content, Sequence):
            message["content"] = [
                {**p, "text": _MARKER.format(next(counter))}
                if isinstance(p, Mapping) and p.get("type") == "text" and isinstance(p.get("text"), str)
                else p for p in content]
        marked.append(message)
    return marked


def _locate_parts(template: ChatTemplate, messages: Sequence[Mapping[str, Any]], parts: list[str],
                  text: str, add_generation_prompt: bool) -> list[tuple[str, int | None]] | None:
    """`text` cut into (piece, part index or None for template text), or None where the marked
    rendering does not line up with the real one."""
    marked = template.render(_with_markers(messages), add_generation_prompt=add_generation_prompt)
    pieces = _MARKER_RE.split(marked)        # template, index, template, index, ..., template
    templates, indexes = pieces[0::2], [int(i) for i in pieces[1::2]]
    segments: list[tuple[str, int | None]] = []
    pos = 0
    for k, index in enumerate(indexes):
        if not text.startswith(templates[k], pos):
            return None
        segments.append((templates[k], None))
        pos += len(templates[k])
        following = templates[k + 1]
        part = parts[index]
        # Templates print a part as it is or trimmed; choose the form the real rendering has.
        for form in dict.fromkeys((part, part.strip(), part.lstrip(), part.rstrip())):
            end = pos + len(form)
            if text.startswith(form, pos) and (text.startswith(following, end) if k + 1 < len(indexes)
                                               else text[end:] == following):
                break
        else:
            return None
        segments.append((form, index))
        pos = end
    if text[pos:] != templates[-1]:
        return None
    segments.append((templates[-1], None))
    return [(piece, index) for piece, index in segments if piece]
