"""Fuzz harness: untrusted message lists through `mmedge.text.ChatTemplate.render`.

Templates: SmolLM2-Instruct's (what the tiny bundles and mmedge-tiny-vlm carry, embedded here) and,
where the shared fixtures are present, SmolVLM-256M-Instruct's and Qwen3-VL-4B-Instruct's (the
latter with tools, thinking and tool-call branches). The bytes pick a template and decode into a
conversation: messages with fuzzed roles and contents (strings, part lists with text and image
parts, nested JSON-like values, numbers, None), sometimes tools and documents, and
add_generation_prompt. The render must return a string or raise PromptError.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from _harness import ROOT, Bytes, instrumented, json_value, main

with instrumented(__name__ == "__main__", "jinja2"):
    from mmedge.text import ChatTemplate

# SmolLM2-135M-Instruct's chat template (Apache-2.0), as its tokenizer_config.json has it.
SMOLLM2 = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
           "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
           "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
           "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
           "{{ '<|im_start|>assistant\n' }}{% endif %}")
FIXTURES = ROOT.parent / "shared" / "fixtures" / "hf"
SPECIAL = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>"}
TEMPLATES: list[ChatTemplate] = []
ROLES = ["user", "assistant", "system", "tool", "developer", "", "USER", "image"]
WORDS = ["type", "text", "image", "video", "content", "role", "tool_calls", "function", "name",
         "arguments", "reasoning_content", "thinking", "tool_call_id", "<think>", "</think>",
         "<|im_start|>", "{{", "{%", "\n", "image_url", "url"]


def setup(work: Path) -> None:
    if TEMPLATES:
        return
    TEMPLATES.append(ChatTemplate(SMOLLM2, SPECIAL))
    for name in ("smolvlm-256m-instruct", "qwen3-vl-4b-instruct"):
        path = FIXTURES / name / "chat_template.json"
        if path.is_file():   # absent in a user's clone: the embedded template alone
            TEMPLATES.append(ChatTemplate(json.loads(path.read_text())["chat_template"], SPECIAL))


def seeds() -> list[bytes]:
    return [bytes([t, 1, 2, 0, 3, 5]) + b"hello" for t in range(3)] + [
        bytes([1, 0, 3, 1, 5, 1, 2, 3, 0, 9]) + b"describe it",
        bytes([2, 3, 4, 2, 1, 6, 7, 1, 1, 8, 9]),
    ]


def _content(b: Bytes) -> Any:
    kind = b.int(4)
    if kind == 0:
        return b.text(40)
    if kind == 1:
        parts = []
        for _ in range(b.int(4)):
            part_type = b.choice(["text", "image", "video", "image_url", ""])
            part: dict[str, Any] = {"type": part_type}
            if part_type == "text" or b.bool():
                part["text"] = b.text(20) if b.bool() else json_value(b, 2, WORDS)
            parts.append(part)
        return parts
    return json_value(b, 1, WORDS)


def _message(b: Bytes) -> Any:
    if b.int(16) == 15:
        return json_value(b, 1, WORDS)        # not a message at all
    message: dict[str, Any] = {"role": b.choice(ROLES) if b.int(8) != 7 else json_value(b, 2, WORDS)}
    if b.int(8) != 7:
        message["content"] = _content(b)
    for _ in range(b.int(3)):
        message[b.choice(WORDS)] = json_value(b, 1, WORDS)
    return message


def one_input(data: bytes) -> None:
    b = Bytes(data)
    template = TEMPLATES[b.int(len(TEMPLATES))]
    messages = [_message(b) for _ in range(1 + b.int(6))]
    kwargs: dict[str, Any] = {"add_generation_prompt": b.bool()}
    if b.int(4) == 0:
        kwargs["tools"] = [json_value(b, 1, WORDS) for _ in range(b.int(3))]
    if b.int(8) == 0:
        kwargs["documents"] = [json_value(b, 1, WORDS) for _ in range(b.int(3))]
    if b.int(8) == 0:
        kwargs["enable_thinking"] = json_value(b, 2, WORDS)
    out = template.render(messages, **kwargs)   # PromptError: allowed
    if not isinstance(out, str):
        raise AssertionError(f"render returned {type(out).__name__}")


if __name__ == "__main__":
    main(sys.modules[__name__])

