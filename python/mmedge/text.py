"""The runtime's text side: tokenizer, chat template, streaming detokenizer, stop strings.

Each class matches what Hugging Face transformers 5.x does with the same files, using only
`tokenizers`, `jinja2` and the standard library:

- `Tokenizer`      encode/decode like the transformers tokenizer whose `save_pretrained` wrote the
                   bundle's tokenizer.json (transformers rebuilds some tokenizers from vocab and
                   merges, so the exporter must save the tokenizer transformers built, not copy the
                   Hub's file).
- `ChatTemplate`   `tokenizer.apply_chat_template(messages, tokenize=False)`.
- `StreamingDetokenizer`  token ids in one at a time, text out; everything it emits, joined, equals
                   `Tokenizer.decode` of all the ids.
- `StopStrings`    cuts streamed text before the first stop string.

Sampling lives in mmedge.sampling, the generation loop in mmedge.generate.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
import numpy as np
import tokenizers
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .errors import BundleError, MMEdgeError, PromptError

__all__ = ["Tokenizer", "ChatTemplate", "StreamingDetokenizer", "StopStrings"]

_REPLACEMENT_CHAR = "\ufffd"


class Tokenizer:
    """A bundle's tokenizer: tokenizer.json plus the manifest's "text" dict.

    `text` keys read here (all optional): "special_tokens", "eos_token_ids" (default: the id of
    special_tokens["eos_token"]), and "clean_up_tokenization_spaces" (transformers' flag of that
    name; as in transformers it acts on WordPiece/Unigram models and is ignored for BPE). Whether
    encoding adds BOS/EOS is the tokenizer.json post-processor's business, as in transformers.
    """

    def __init__(self, tokenizer_file: str | Path, text: Mapping[str, Any] | None = None):
        path = Path(tokenizer_file)
        if not path.is_file():
            raise BundleError(f"The tokenizer file {path} is missing. Re-export the bundle.")
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise BundleError(f"Cannot read the tokenizer {path}: {e}. Re-export the bundle.") from e
        # transformers turns off truncation and padding unless asked for them; so do we.
        backend.no_truncation()
        backend.no_padding()
        self._backend = backend
        text = dict(text or {})
        self.special_tokens: dict[str, str] = {
            k: v for k, v in dict(text.get("special_tokens") or {}).items() if isinstance(v, str)
        }

        model_type = type(backend.model).__name__  # "BPE", "WordPiece", "Unigram", "WordLevel"
        # The decoder's own JSON (serializing the whole tokenizer would cost a quarter second).
        decoders = _component_types(json.loads(backend.decoder.__getstate__()) if backend.decoder else None)
        self.special_ids: frozenset[int] = frozenset(
            i for i, tok in backend.get_added_tokens_decoder().items() if tok.special
        )
        # The ByteFallback decoder turns each run of <0xNN> tokens into text as a whole.
        byte_ids = (backend.token_to_id(f"<0x{b:02X}>") for b in range(256)) if "ByteFallback" in decoders else ()
        self._byte_ids: frozenset[int] = frozenset(i for i in byte_ids if i is not None)
        # transformers' CLIPTokenizer wraps the backend's decode: end-of-word suffix -> " ", then
        # strip(). It applies to any BPE model whose decoder leaves the suffix in (BPEDecoder removes it).
        suffix = (backend.model.end_of_word_suffix or "") if model_type == "BPE" else ""
        self._word_suffix: str = suffix if "BPEDecoder" not in decoders else ""
        self._clean_up: bool = bool(text.get("clean_up_tokenization_spaces", False)) and model_type != "BPE"

        eos_ids = text.get("eos_token_ids")
        if eos_ids is None:
            eos = self.token_to_id(self.special_tokens.get("eos_token", ""))
            eos_ids = [] if eos is None else [eos]
        self.eos_token_ids: list[int] = [int(i) for i in eos_ids]

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (`len(hf_tokenizer)`)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of `text`. Special tokens written in the text are parsed as such (as
        transformers does by default); `add_special_tokens` runs the tokenizer's post-processor
        (e.g. prepends BOS)."""
        if not isinstance(text, str):
            raise PromptError(f"Can only tokenize a string, got {type(text).__name__}.")
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Text of `ids`, equal to transformers' `tokenizer.decode(ids, skip_special_tokens=...)`."""
        return self._finish(self._decode_raw([int(i) for i in ids], skip_special_tokens))

    # -- shared with StreamingDetokenizer -------------------------------------------------------
    def _decode_raw(self, ids: list[int], skip_special_tokens: bool) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def _finish(self, text: str) -> str:
        """transformers' Python-side edits after the backend's decode."""
        if self._word_suffix:
            text = text.replace(self._word_suffix, " ").strip()
        if self._clean_up:
            text = _clean_up_tokenization(text)
        return text


def _component_types(component: Any) -> set[str]:
    """Every "type" named in a tokenizer.json component, nested Sequences included."""
    found: set[str] = set()
    if isinstance(component, Mapping):
        if isinstance(component.get("type"), str):
            found.add(component["type"])
        for value in component.values():
            found |= _component_types(value)
    elif isinstance(component, list):
        for value in component:
            found |= _component_types(value)
    return found


# transformers' `clean_up_tokenization`: every pattern is a space followed by at most 3 characters,
# and every replacement only deletes spaces.
_CLEAN_UP = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
             (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def _clean_up_tokenization(text: str) -> str:
    for old, new in _CLEAN_UP:
        text = text.replace(old, new)
    return text


# ---------------------------------------------------------------------------------------------
# Chat template
# ---------------------------------------------------------------------------------------------


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
                              f"got {message!r}.")
        chat.append(_plain_template_data({k: v for k, v in message.items() if v is not None}))
    return _alias_reasoning_fields(chat)


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


# ---------------------------------------------------------------------------------------------
# Streaming detokenizer
# ---------------------------------------------------------------------------------------------


class StreamingDetokenizer:
    """Turns token ids, pushed one at a time, into text as soon as it is final.

    Joined, the strings `push` and `flush` return equal `tokenizer.decode(all_ids,
    skip_special_tokens)`. A chunk never ends inside a multi-byte character.

    How: decode a window of ids that starts one emitted chunk back (so a token's leading space,
    which SentencePiece-style decoders strip from the first token, survives) and emit what the
    window added, once its text does not end in U+FFFD (an incomplete UTF-8 sequence). The window
    also waits while the last id is a <0xNN> byte token of a ByteFallback decoder: a later byte can
    turn the whole run of bytes into U+FFFDs. Special tokens that decoding skips are dropped on
    arrival: decoding removes them before the decoder runs, so they must not end a window (say,
    inside a run of bytes). Last come transformers' Python-side edits (CLIP's
    suffix-and-strip, `clean_up_tokenization`), each holding back the little text they may still
    change.

    Call `flush()` at the end of the stream; it returns what was held back and resets the object.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self._tok = tokenizer
        self._skip_special = skip_special_tokens
        self._reset()

    def _reset(self) -> None:
        self._ids: list[int] = []   # the window: ids from the start of the last emitted chunk
        self._read = 0              # ids[:read] were emitted already; they are context
        self._prefix = ""           # decode of ids[:read]
        self._held_suffix = ""      # tail that may be the start of the end-of-word suffix
        self._started = False       # a non-space character was emitted (leading spaces are stripped)
        self._held_space = ""       # trailing whitespace, emitted only if more text follows
        self._held_clean = ""       # tail that a clean-up pattern could still reach

    def push(self, token_id: int) -> str:
        """Add one token id; returns the text that became final (often "")."""
        token_id = int(token_id)
        if self._skip_special and token_id in self._tok.special_ids:
            return ""
        self._ids.append(token_id)
        if token_id in self._tok._byte_ids:
            return ""
        text = self._tok._decode_raw(self._ids, self._skip_special)
        if len(text) <= len(self._prefix) or text.endswith(_REPLACEMENT_CHAR):
            return ""
        new = text[len(self._prefix):]
        self._ids = self._ids[self._read:]
        self._read = len(self._ids)
        self._prefix = self._tok._decode_raw(self._ids, self._skip_special)
        return self._finish(new, final=False)

    def flush(self) -> str:
        """End of stream: the text still held back. The detokenizer is then ready for a new stream."""
        text = self._tok._decode_raw(self._ids, self._skip_special) if self._ids else ""
        out = self._finish(text[len(self._prefix):], final=True)
        self._reset()
        return out

    def _finish(self, text: str, final: bool) -> str:
        """`Tokenizer._finish`, applied to a stream of raw chunks."""
        tok = self._tok
        if tok._word_suffix:
            text = self._held_suffix + text
            keep = 0 if final else _partial_match_len(text, (tok._word_suffix,))
            self._held_suffix = text[len(text) - keep:]
            text = text[:len(text) - keep].replace(tok._word_suffix, " ")
            # str.strip() of the whole text: drop leading whitespace, hold trailing whitespace.
            if not self._started:
                text = text.lstrip()
                self._started = bool(text)
            if self._started:
                text = self._held_space + text
                body = text.rstrip()
                self._held_space = text[len(body):]
                text = body
        if tok._clean_up:
            text = self._held_clean + text
            cut = len(text) if final else _clean_up_cut(text)
            self._held_clean = text[cut:]
            text = _clean_up_tokenization(text[:cut])
        return text


def _clean_up_cut(text: str) -> int:
    """Largest j such that `_clean_up_tokenization(text[:j] + rest) == clean(text[:j]) + clean(rest)`
    for any `rest`: no pattern (a space and up to 3 more characters) can start in text[j-3:j]."""
    j = len(text)
    while j > 0 and " " in text[max(0, j - 3):j]:
        j -= 1
    return j


def _partial_match_len(text: str, patterns: Iterable[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `patterns`."""
    longest = max((len(p) for p in patterns), default=0)
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(p.startswith(tail) for p in patterns):
            return k
    return 0


# ---------------------------------------------------------------------------------------------
# Stop strings
# ---------------------------------------------------------------------------------------------


class StopStrings:
    """Cuts a stream of text before the first occurrence of any stop string.

    `feed(chunk)` returns the text that is safe to show and whether a stop string was hit (the
    returned text then ends right before it, and later feeds return ""). Text that could be the
    start of a stop string is held back until it is decided; `flush()` returns it at the end.
    """

    def __init__(self, stops: Iterable[str] = ()):
        stops = tuple(stops)
        for s in stops:
            if not isinstance(s, str) or not s:
                raise MMEdgeError(f"Stop strings must be non-empty strings, got {s!r}.")
        self.stops = stops
        self.hit: str | None = None  # the stop string that ended the stream
        self._held = ""

    @property
    def stopped(self) -> bool:
        return self.hit is not None

    def feed(self, text: str) -> tuple[str, bool]:
        if self.stopped:
            return "", True
        text = self._held + text
        found = [(text.find(s), -len(s), s) for s in self.stops if s in text]
        if found:
            pos, _, self.hit = min(found)
            self._held = ""
            return text[:pos], True
        keep = _partial_match_len(text, self.stops)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self, text: str = "") -> str:
        """End of stream: feed the last `text`, and return it with everything held back."""
        out, stopped = self.feed(text)
        if not stopped:
            out += self._held
        self._held = ""
        return out
