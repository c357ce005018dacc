"""`POST /v1/embeddings` for CLIP/SigLIP bundles: texts and images into one embedding space.

`input` is OpenAI's (a string or a list of strings) with images added the way Jina's and
Voyage's multimodal embedding APIs do it, as objects in the list:

    {"model": "tiny-clip", "input": ["a red door",
                                     {"image": "data:image/jpeg;base64,..."},
                                     {"text": "a staircase"},
                                     {"type": "image_url", "image_url": {"url": "data:..."}}]}

One vector per item, in order (`data[i].index`), L2-normalized, equal to `ClipModel.embed_texts` /
`embed_images` of the same inputs; `encoding_format` "float" or "base64" (little-endian float32,
what OpenAI's Python client asks for by default and decodes itself). `usage.prompt_tokens` counts
the text tokens; images count none. Token-id inputs (lists of integers) are refused: a CLIP
bundle's tokenizer is not the client's.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mmedge.serve.errors import ApiError
from mmedge.serve.image_urls import image_bytes, url_of_part

__all__ = ["EmbeddingRequest", "parse_embedding_request", "embed", "response"]

MAX_INPUTS = 256


@dataclass
class EmbeddingRequest:
    model: str | None
    items: list[tuple[str, Any]]       # ("text", str) or ("image", bytes | Path)
    encoding_format: str = "float"


def parse_embedding_request(body: Any, allowed_paths: Sequence[Path]) -> EmbeddingRequest:
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise ApiError(400, "`model` must be a string: a name from GET /v1/models.", param="model")
    value = body.get("input")
    items_in = [value] if isinstance(value, (str, dict)) else value
    if not isinstance(items_in, list) or not items_in:
        raise ApiError(400, "`input` must be a string, or a non-empty list of strings and "
                            "{\"image\": \"data:image/...;base64,...\"} objects.", param="input")
    if len(items_in) > MAX_INPUTS:
        raise ApiError(400, f"`input` has {len(items_in)} items; send at most {MAX_INPUTS} a request.",
                       param="input")
    items = [_item(item, f"input[{k}]", allowed_paths) for k, item in enumerate(items_in)]
    encoding = body.get("encoding_format") or "float"
    if encoding not in ("float", "base64"):
        raise ApiError(400, "`encoding_format` must be \"float\" or \"base64\".", param="encoding_format")
    return EmbeddingRequest(model=model, items=items, encoding_format=encoding)


def _item(item: Any, at: str, allowed_paths: Sequence[Path]) -> tuple[str, Any]:
    if isinstance(item, str):
        if not item:
            raise ApiError(400, f"{at} is an empty string.", param=at)
        return ("text", item)
    if isinstance(item, dict):
        if item.get("type") == "image_url":
            return ("image", image_bytes(url_of_part(item, at), allowed_paths, at))
        if isinstance(item.get("image"), str):
            return ("image", image_bytes(item["image"], allowed_paths, at))
        text = item.get("text")
        if isinstance(text, str) and text:
            return ("text", text)
    if isinstance(item, (int, list)):
        raise ApiError(400, f"{at}: token ids are not accepted; send the text itself.", param=at)
    raise ApiError(400, f"{at} must be a string, {{\"text\": ...}} or {{\"image\": \"data:image/...\"}}.",
                   param=at)


def embed(model: Any, request: EmbeddingRequest) -> tuple[np.ndarray, int]:
    """Run in the model's worker: the vectors [items, dim] in input order, and the text tokens."""
    texts = [k for k, (kind, _) in enumerate(request.items) if kind == "text"]
    images = [k for k, (kind, _) in enumerate(request.items) if kind == "image"]
    out = np.empty((len(request.items), model.embed_dim), dtype=np.float32)
    tokens = 0
    if texts:
        batch = [request.items[k][1] for k in texts]
        out[texts] = model.embed_texts(batch)
        tokens = int(np.count_nonzero(model.tokenize(batch) != model.pad_token_id))
    if images:
        out[images] = model.embed_images([request.items[k][1] for k in images])
    return out, tokens


def response(name: str, request: EmbeddingRequest, vectors: np.ndarray, tokens: int) -> dict[str, Any]:
    def encoded(vector: np.ndarray) -> Any:
        if request.encoding_format == "base64":
            return base64.b64encode(vector.astype("<f4").tobytes()).decode()
        return vector.tolist()

    return {"object": "list", "model": name,
            "data": [{"object": "embedding", "index": k, "embedding": encoded(v)}
                     for k, v in enumerate(vectors)],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
