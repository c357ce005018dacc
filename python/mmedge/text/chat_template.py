"""The bundle's chat template, rendered as transformers' `apply_chat_template(..., tokenize=False)`.

The template runs in Jinja's immutable sandbox with transformers' extensions and globals
(`raise_exception`, `strftime_now`, `tojson` without HTML escaping, a restricted `dict` and
`namespace`), so a bundle's template cannot reach Python internals.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
from jinja2.sandbox import ImmutableSandboxedEnvironment

from mmedge.errors import BundleError, PromptError

__all__ = ["ChatTemplate"]



class ChatTemplate:
    """A bundle's chat template, rendered as `tokenizer.apply_chat_template(..., tokenize=False)`.

    Messages are dicts with "role" and "content"; content is a string or a list of parts such as
    {"type": "text", "text": ...} and {"type": "image"}. The special tokens ("bos_token",
    "eos_token", ...) are template variables, as in transformers; keyword arguments to `render`
    override them.

    A bundle without a template (`available` is False) gets a plain fallback: the text of every
    message, in order, joined by "\\n"; roles, image parts and `add_generation_prompt` are ignored.
    The caller then encodes with the tokenizer's special tokens and places image tokens itself.
    """

    def __init__(self, source: str | None, special_tokens: Mapping[str, str] | None = None):
        self.source = source or None
        self.special_tokens: dict[str, str] = {
            k: v for k, v in dict(special_tokens or {}).items() if isinstance(v, str)
        }
        self._template = _compile_template(self.source) if self.source else None

    @property
    def available(self) -> bool:
        """Whether the bundle has a chat template (else `render` uses the plain fallback)."""
        return self._template is not None

    def render(self, messages: Sequence[Mapping[str, Any]], *, add_generation_prompt: bool = True,
               tools: Sequence[Mapping[str, Any]] | None = None,
               documents: Sequence[Mapping[str, Any]] | None = None, **kwargs: Any) -> str:
        """The prompt text for `messages`. Unlike transformers, `add_generation_prompt` defaults
        to True: the runtime renders prompts to generate from."""
        chat = _template_messages(messages)
        if self._template is None:
            return "\n".join(_message_text(m) for m in chat)
        variables = _plain_template_data({**self.special_tokens, **kwargs})
        try:
            return self._template.render(messages=chat, tools=_plain_template_data(tools),
                                         documents=_plain_template_data(documents),
                                         add_generation_prompt=add_generation_prompt, **variables)
        except jinja2.TemplateError as e:
            raise PromptError(f"The model's chat template rejected the conversation: {e}") from e
        except Exception as e:  # noqa: BLE001 - the bundle's template code, run on the caller's data
            # A template written for string contents given a list of parts, say.
            raise PromptError(f"The model's chat template cannot render this conversation "
                              f"({type(e).__name__}: {e}); check the messages' shape (this model "
                              "may take only string contents).") from e


def _template_messages(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Check the conversation and prepare it as transformers does: keys whose value is None are
    dropped, values become plain JSON-like data, reasoning fields are aliased."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise PromptError("The conversation must be a non-empty list of messages like "
                          "{'role': 'user', 'content': 'Hello'}.")
    chat = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise PromptError(f"Message {i} must be a dict with a string 'role' (and a 'content'), "
                              f"got {_short(message)}.")
        _check_content(i, message.get("content"))
        chat.append(_plain_template_data({k: v for k, v in message.items() if v is not None}))
    return _alias_reasoning_fields(chat)


def _check_content(i: int, content: Any) -> None:
    """A message's content is a string, None (a tool-call turn), or a list of typed parts."""
    if content is None or isinstance(content, str):
        return
    if not isinstance(content, (list, tuple)):
        raise PromptError(f"Message {i}'s content must be a string or a list of parts, not "
                          f"{type(content).__name__}.")
    for j, part in enumerate(content):
        if not isinstance(part, Mapping) or not isinstance(part.get("type"), str):
            raise PromptError(f"Part {j} of message {i} must be a dict with a string 'type' "
                              f"(e.g. {{'type': 'text', 'text': '...'}} or {{'type': 'image'}}), "
                              f"got {_short(part)}.")
        if part["type"] == "text" and not isinstance(part.get("text"), str):
            raise PromptError(f"Part {j} of message {i} is a text part without a string 'text'.")


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content
                   if isinstance(part, Mapping) and part.get("type") == "text")


# Names a message's reasoning is passed under; the first is the one templates read (transformers).
_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def _alias_reasoning_fields(chat: list[dict[str, Any]]) -> list[dict[str, Any]]:
    aliased = []
    for message in chat:
        reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
        if reasoning is not None:
            message = {"thinking": reasoning, **message, "reasoning_content": reasoning}
        aliased.append(message)
    return aliased


def _plain_template_data(value: Any) -> Any:
    """Rebuild what the template sees from plain JSON types (as transformers does): rich objects
    such as images become an inert "<TypeName>" placeholder."""
    if value is None or type(value) in (str, int, float, bool):
        return value
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, Mapping):
        return {_plain_template_data(k): _plain_template_data(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_template_data(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain_template_data(v) for v in value)
    if isinstance(value, np.generic):
        return _plain_template_data(value.item())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain_template_data(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if callable(getattr(value, "model_dump", None)):
        return _plain_template_data(value.model_dump())
    return f"<{type(value).__name__}>"


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks in
    transformers; for rendering it is a no-op around its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.CallBlock:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


class _TemplateDict:
    """`dict` inside templates, limited so attribute access cannot reach Python internals."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict:
        return dict.fromkeys(*args, **kwargs)


class _TemplateNamespace(jinja2.utils.Namespace):
    """`namespace` inside templates; rejects underscore-prefixed attributes."""

    def __init__(*args: Any, **kwargs: Any):  # noqa: N805 - Jinja's signature trick, so namespace(self=...) works
        self, args = args[0], args[1:]
        attrs = dict(*args, **kwargs)
        for name in attrs:
            _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _TemplateNamespace._check_name(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check_name(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"Chat templates cannot store underscore-prefixed attributes on a namespace, got {name!r}.")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # transformers' tojson: no HTML escaping (unlike Jinja's), and json.dumps' options exposed.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(format: str) -> str:
    return datetime.now().strftime(format)


@functools.lru_cache(maxsize=16)
def _compile_template(source: str) -> jinja2.Template:
    """The environment of transformers' `_compile_jinja_template`."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[_GenerationTag, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["dict"] = _TemplateDict()
    env.globals["namespace"] = _TemplateNamespace
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise BundleError(f"The bundle's chat template does not parse (line {e.lineno}: {e.message}). "
                          "Re-export the bundle or fix manifest.json's text.chat_template.") from e
