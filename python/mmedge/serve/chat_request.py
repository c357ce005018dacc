"""A `POST /v1/chat/completions` body, checked and turned into a `Model.generate` call.

OpenAI's request shape (https://platform.openai.com/docs/api-reference/chat/create): `messages`
with string content or content parts (`text`, `image_url`), `max_tokens` /
`max_completion_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n`, `stream`,
`stream_options.include_usage`. mmedge's extras, all optional: `top_k`, `repetition_penalty`,
`ignore_eos` (generate max_tokens whatever the model says: benchmarks; llama-server has it too).
Fields a client commonly sends that change nothing here (`user`, `presence_penalty` = 0, ...) are
ignored; ones that would change the answer and are not supported (`n` > 1, `logprobs`, `tools`,
`response_format` other than text) are refused, naming the field.

Unlike OpenAI, `temperature` defaults to 0 (greedy), so an answer equals `mmedge.load(...)
.generate(...)` on the same input unless a request asks for sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from mmedge.serve.errors import ApiError
from mmedge.serve.image_urls import image_bytes, url_of_part

__all__ = ["ChatRequest", "parse_chat_request"]

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# Refused unless absent or set to the value that changes nothing.
_UNSUPPORTED = {"logprobs": (None, False), "top_logprobs": (None, 0), "tools": (None, []),
                "tool_choice": (None, "none", "auto"), "functions": (None, []),
                "presence_penalty": (None, 0, 0.0), "frequency_penalty": (None, 0, 0.0),
                "logit_bias": (None, {}), "audio": (None,), "prediction": (None,)}
_MAX_STOPS = 4   # as OpenAI


@dataclass
class ChatRequest:
    model: str | None
    messages: list[dict[str, Any]]                 # mmedge's form: {"type": "image"} parts
    images: list[bytes | Path] = field(default_factory=list)   # one per image part, in order
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None                  # None: as many as the context leaves
    options: dict[str, Any] = field(default_factory=dict)      # generate()'s sampling keywords


def parse_chat_request(body: Any, allowed_paths: Sequence[Path]) -> ChatRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    for name, harmless in _UNSUPPORTED.items():
        if name in body and body[name] not in harmless:
            raise ApiError(400, f"`{name}` is not supported by this server; leave it out.",
                           param=name, code="unsupported_parameter")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, "Only text responses are supported (response_format {\"type\": \"text\"}).",
                       param="response_format", code="unsupported_parameter")
    n = body.get("n", 1)
    if n not in (1, None):
        raise ApiError(400, f"n={n!r}: this server gives one choice per request (n=1); send "
                            "several requests for several answers.", param="n",
                       code="unsupported_parameter")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "`model` must be a string: a name from GET /v1/models.", param="model")
    messages, images = _messages(body.get("messages"), allowed_paths)
    stream = _boolean(body, "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "`stream_options` must be an object.", param="stream_options")
    if stream_options and not stream:
        raise ApiError(400, "`stream_options` is only allowed with stream: true.", param="stream_options")
    return ChatRequest(model=model, messages=messages, images=images, stream=stream,
                       include_usage=_boolean(stream_options, "include_usage"),
                       max_tokens=_max_tokens(body), options=_sampling(body))


def _messages(value: Any, allowed_paths: Sequence[Path]) -> tuple[list[dict[str, Any]], list[Any]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "`messages` must be a non-empty list of {\"role\", \"content\"} objects.",
                       param="messages")
    messages, images = [], []
    for k, message in enumerate(value):
        where = f"messages[{k}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object with a role and content.", param=where)
        role = _ROLES.get(message.get("role"))
        if role is None:
            raise ApiError(400, f"{where}.role is {message.get('role')!r}; use system, user or "
                                "assistant (tool messages are not supported).", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            messages.append({"role": role, "content": content})
            continue
        if not isinstance(content, list) or not content:
            raise ApiError(400, f"{where}.content must be a string or a non-empty list of content "
                                "parts.", param=f"{where}.content")
        parts = []
        for j, part in enumerate(content):
            at = f"{where}.content[{j}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                parts.append({"type": "text", "text": part["text"]})
            elif kind in ("image_url", "image"):
                if role != "user":
                    raise ApiError(400, f"{at}: images go in user messages, not in a {message['role']} "
                                        "message.", param=at)
                url = url_of_part(part if kind == "image_url" else {"image_url": part.get("image")}, at)
                images.append(image_bytes(url, allowed_paths, at))
                parts.append({"type": "image"})
            else:
                raise ApiError(400, f"{at} must be {{\"type\": \"text\", \"text\": ...}} or "
                                    "{\"type\": \"image_url\", \"image_url\": {\"url\": ...}}.", param=at)
        if all(part["type"] == "text" for part in parts):   # plain text: the template's usual form
            messages.append({"role": role, "content": "".join(part["text"] for part in parts)})
        else:
            messages.append({"role": role, "content": parts})
    if not any(message["role"] == "user" for message in messages):
        raise ApiError(400, "`messages` has no user message; add one with the question.",
                       param="messages")
    return messages, images


def _boolean(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ApiError(400, f"`{name}` must be true or false.", param=name)
    return value


def _max_tokens(body: dict[str, Any]) -> int | None:
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ApiError(400, f"`{name}` must be a whole number of at least 1.", param=name)
        return value
    return None


def _number(body: dict[str, Any], name: str, default: float, low: float, high: float,
            low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (low < value if low_open else low <= value) and value <= high):
        bound = f"({low}, {high}]" if low_open else f"[{low}, {high}]"
        raise ApiError(400, f"`{name}` must be a number in {bound}.", param=name)
    return float(value)


def _sampling(body: dict[str, Any]) -> dict[str, Any]:
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or len(stop) > _MAX_STOPS or not all(
            isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"`stop` must be a non-empty string or a list of at most {_MAX_STOPS}.",
                       param="stop")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise ApiError(400, "`seed` must be a whole number >= 0.", param="seed")
    top_k = body.get("top_k", 0)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ApiError(400, "`top_k` must be a whole number >= 0 (0 = off).", param="top_k")
    return {"temperature": _number(body, "temperature", 0.0, 0.0, 2.0),
            "top_p": _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True), "top_k": top_k,
            "repetition_penalty": _number(body, "repetition_penalty", 1.0, 0.0, 10.0, low_open=True),
            "seed": seed, "stop": stop, "ignore_eos": _boolean(body, "ignore_eos")}
