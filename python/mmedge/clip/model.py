"""CLIP/SigLIP bundles at run time: image and text embeddings, zero-shot classification.

`mmedge.load(bundle)` returns a `ClipModel` when the bundle's family is "clip" (see
`mmedge.export.families.clip` for what such a bundle holds):

    model = mmedge.load("clip-bundle/")
    model.embed_images(["a.jpg", "b.jpg"])          # float32 [2, dim], L2-normalized
    model.embed_texts(["a door", "a staircase"])    # float32 [2, dim], L2-normalized
    model.classify("a.jpg", ["door", "staircase", "wall"])   # [(label, prob), ...] best first

A label or text most of whose words the tokenizer does not know (maps to its unknown token, as the
word-level tokenizer of mmedge-tiny-clip does with every word outside its scene vocabulary) gives
an embedding that says nothing about it: `classify` and `label_embeddings` (the labels) and
`ImageIndex.search` (the query) then warn with `UnknownWordsWarning` (a warning rather than a
changed return value: the results keep their type, the caller sees it at its own line, and
`warnings.filterwarnings` silences it or makes it an error). `embed_texts` embeds any text as it is
(the exporter's parity check embeds fixed sentences with it) and warns only with
`warn_unknown=True`. Byte-level BPE tokenizers (real CLIP's) have no unknown words and never warn.

Scores are `logit_scale * cos + logit_bias`; CLIP turns them into probabilities with a softmax over
the labels, SigLIP with a sigmoid per label (its probabilities need not sum to 1). Image
embeddings are cached in memory by the sha256 of the image's file bytes (paths, bytes) or pixels
(PIL images, arrays), so a file embedded twice runs the image graph once.

Not here: image decoding (mmedge.vision.image), preprocessing and patch embedding (mmedge.vision.inputs),
the export.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tokenizers
from PIL import Image

from mmedge.backend import Device, open_session, resolve_device
from mmedge.bundle import Bundle
from mmedge.errors import BundleError, ImageError, PromptError
from mmedge.vision.image import ImageLike
from mmedge.vision.inputs import VisionInput

__all__ = ["ClipModel", "DEFAULT_TEMPLATES", "UnknownWordsWarning"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)
CACHE_SIZE = 10_000  # image embeddings kept in memory (a 512-dim embedding is 2 KB)


class UnknownWordsWarning(UserWarning):
    """A label or text is mostly words the bundle's tokenizer does not know: more than half of its
    word tokens (tokens covering a letter or digit) are the tokenizer's unknown token, so its
    embedding, and any score computed from it, carries (almost) nothing of what it says."""


def unknown_token(backend: tokenizers.Tokenizer) -> tuple[str, int] | None:
    """The tokenizer's unknown token and its id, read from its model (WordLevel, WordPiece and BPE
    name it, Unigram gives its id); None when it has none."""
    model = json.loads(backend.to_str()).get("model", {})
    token = model.get("unk_token")
    if token is not None:
        token_id = backend.token_to_id(token)
        return None if token_id is None else (token, token_id)
    if model.get("unk_id") is not None:
        token_id = int(model["unk_id"])
        return backend.id_to_token(token_id), token_id
    return None


def _caller_stacklevel() -> int:
    """warnings.warn's stacklevel that names the first caller outside mmedge.clip (the user's
    line, or the CLI's), called from the function that warns."""
    here = str(Path(__file__).resolve().parent)
    frame, level = sys._getframe(2), 2
    while frame is not None and str(Path(frame.f_code.co_filename).resolve().parent) == here:
        frame, level = frame.f_back, level + 1
    return level


def image_key(image: ImageLike) -> str | None:
    """sha256 of what identifies an image: the file's bytes for paths and encoded bytes, the
    pixels (with mode and size, or dtype and shape) for PIL images and arrays. None when the image
    cannot be read (the preprocessor then reports why)."""
    digest = hashlib.sha256()
    if isinstance(image, (str, os.PathLike)):
        try:
            digest.update(Path(image).read_bytes())
        except OSError:
            return None
    elif isinstance(image, (bytes, bytearray, memoryview)):
        digest.update(bytes(image))
    elif isinstance(image, Image.Image):
        digest.update(f"pil:{image.mode}:{image.size}".encode())
        digest.update(image.tobytes())
    elif isinstance(image, np.ndarray):
        digest.update(f"array:{image.dtype.str}:{image.shape}".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    else:
        return None
    return digest.hexdigest()


class ClipModel:
    """A loaded CLIP or SigLIP bundle. Create it with `mmedge.load`."""

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None,
                 cache_size: int = CACHE_SIZE, strict_device: bool = False):
        self.bundle = bundle
        self.device: Device = resolve_device(device, strict=strict_device)
        m = bundle.manifest
        try:
            clip, text = m["clip"], m["text"]
            self.kind: str = clip["kind"]
            self.embed_dim: int = int(clip["embed_dim"])
            self.logit_scale = float(clip["logit_scale"])
            self.logit_bias = float(clip.get("logit_bias", 0.0))
            self.max_length = int(text["max_length"])
            self.padding: str = text["padding"]
            self.pad_token_id = int(text["pad_token_id"])
            tokenizer_file = bundle.root / text["tokenizer_file"]
            if not isinstance(m["image"], dict):
                raise TypeError("'image' is not a table")
        except (KeyError, TypeError, ValueError) as e:
            raise BundleError(f"{bundle.root}: the manifest's CLIP entries are incomplete "
                              f"({type(e).__name__}: {e}); re-export the bundle.") from None
        if self.kind not in ("clip", "siglip") or self.padding not in ("longest", "max_length"):
            raise BundleError(f"{bundle.root}: unknown CLIP kind {self.kind!r} or padding "
                              f"{self.padding!r}; re-export the bundle with this mmedge.")
        try:
            backend = tokenizers.Tokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # tokenizers raises a bare Exception on malformed files
            raise BundleError(f"Cannot read the tokenizer {tokenizer_file}: {e}. "
                              f"Re-export the bundle.") from None
        # Truncation keeps the post-processor's start and end tokens, as transformers' does.
        backend.enable_truncation(self.max_length)
        backend.no_padding()
        self._tokenizer = backend
        self._unknown = unknown_token(backend)
        self._image = open_session(bundle.path_of("image"), self.device, threads)
        self._vision_input = VisionInput(bundle.root, m, self._image.get_inputs()[0].name, threads=threads)
        self._text = open_session(bundle.path_of("text"), self.device, threads)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self.cache_size = cache_size

    # -- what a caller may want -----------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {"family": "clip", "kind": self.kind, "source": m.get("exporter", {}).get("source"),
                "device": self.device.name, "device_note": self.device.note,
                "quantization": m.get("quantization", {}), "embed_dim": self.embed_dim,
                "logit_scale": self.logit_scale, "logit_bias": self.logit_bias}

    @property
    def model_id(self) -> str:
        """Identifies the bundle's embedding space: a sha256 over the sha256 of both graphs (a
        quantized copy of the same model has another id: its embeddings differ slightly)."""
        files = self.bundle.manifest["files"]
        graphs = [files[self.bundle.components[name]["file"]]["sha256"] for name in ("image", "text")]
        patch = (self.bundle.image or {}).get("patch_embedding")
        if patch:   # the patch embedding's weights are part of the model too
            graphs.append(files[patch["file"]]["sha256"])
        return hashlib.sha256(":".join(graphs).encode()).hexdigest()

    # -- building blocks ------------------------------------------------------------------------
    def preprocess(self, images: Sequence[ImageLike] | ImageLike) -> np.ndarray:
        """Images -> `pixel_values` [n, 3, H, W] float32, as transformers' image processor makes
        them (what the reference model takes; the bundle's own path fuses this into the kernel)."""
        return self._vision_input.preprocessor(images)

    def vision_input(self, images: Sequence[ImageLike] | ImageLike) -> dict[str, np.ndarray]:
        """Images -> the image graph's input: patch tokens from the patch-embedding kernel."""
        return self._vision_input(images)

    def tokenize(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> `input_ids` int64 [n, seq]: start/end tokens added, truncated to max_length,
        padded with pad_token_id to the longest text (CLIP) or to max_length (SigLIP)."""
        texts = _check_texts(texts)
        rows = [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=True)]
        length = self.max_length if self.padding == "max_length" else max(map(len, rows))
        ids = np.full((len(rows), length), self.pad_token_id, dtype=np.int64)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = row
        return ids

    def unknown_words(self, text: str) -> tuple[list[str], int]:
        """(the words of `text` that the tokenizer turns into its unknown token, how many word
        tokens `text` has). Word tokens cover a letter or digit: punctuation is not judged, nor is
        the unknown token typed literally (real CLIP's unk is its "<|endoftext|>"). Tokenizers
        without an unknown token give ([], n)."""
        encoding = self._tokenizer.encode(text, add_special_tokens=False)
        token, token_id = self._unknown or (None, None)
        spans = [text[start:end] for start, end in encoding.offsets]
        words = [(i, span) for i, span in zip(encoding.ids, spans)
                 if span != token and any(c.isalnum() for c in span)]
        return [span for i, span in words if i == token_id], len(words)

    def mostly_unknown(self, text: str) -> list[str] | None:
        """The unknown words of `text` when they are more than half of its word tokens, else None."""
        unknown, n_words = self.unknown_words(text)
        return unknown if 2 * len(unknown) > n_words else None

    def _warn_unknown(self, texts: Sequence[str], what: str) -> None:
        """One UnknownWordsWarning naming every text in `texts` that is mostly unknown words."""
        found = [(t, u) for t in texts if (u := self.mostly_unknown(t)) is not None]
        if not found:
            return
        token = self._unknown[0] if self._unknown else "?"
        listed = "; ".join(repr(t) if u == [t.strip()] else f"{t!r} ({', '.join(dict.fromkeys(u))})"
                           for t, u in found[:10])
        more = f"; and {len(found) - 10} more" if len(found) > 10 else ""
        warnings.warn(
            f"Mostly unknown words in {len(found)} of {len(texts)} {what}s: {listed}{more}. This "
            f"bundle's tokenizer reads those words as {token!r} (it knows "
            f"{self._tokenizer.get_vocab_size()} tokens), so their embeddings and scores say "
            f"little; use words the model was trained on.",
            UnknownWordsWarning, stacklevel=_caller_stacklevel())

    def probabilities(self, cosines: np.ndarray) -> np.ndarray:
        """Cosine similarities [..., labels] -> probabilities: softmax over the last axis (CLIP)
        or a sigmoid per entry (SigLIP) of `logit_scale * cos + logit_bias`."""
        logits = self.logit_scale * np.asarray(cosines, dtype=np.float64) + self.logit_bias
        if self.kind == "siglip":
            return 1.0 / (1.0 + np.exp(-logits))
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)

    # -- the API ---------------------------------------------------------------------------------
    def embed_images(self, images: Sequence[ImageLike] | ImageLike, batch_size: int = 8) -> np.ndarray:
        """Images (paths, bytes, PIL images, HxWxC arrays) -> float32 [n, dim], L2-normalized."""
        if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise ImageError("no images were given; pass at least one image.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        keys = [image_key(im) for im in images]
        out = np.empty((len(images), self.embed_dim), dtype=np.float32)
        todo = []
        for i, key in enumerate(keys):
            if key is not None and key in self._cache:
                self._cache.move_to_end(key)
                out[i] = self._cache[key]
            else:
                todo.append(i)
        for start in range(0, len(todo), batch_size):
            chunk = todo[start:start + batch_size]
            embeds = self._image.run(None, self._vision_input([images[i] for i in chunk]))[0]
            for i, e in zip(chunk, embeds):
                out[i] = e
                if keys[i] is not None and self.cache_size > 0:
                    self._cache[keys[i]] = e.copy()
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return out

    def embed_texts(self, texts: Sequence[str] | str, batch_size: int = 64,
                    warn_unknown: bool = False) -> np.ndarray:
        """Texts -> float32 [n, dim], L2-normalized. With `warn_unknown`, warns
        (UnknownWordsWarning) about texts that are mostly words the tokenizer does not know."""
        texts = _check_texts(texts)
        if warn_unknown:
            self._warn_unknown(texts, "text")
        parts = [self._text.run(None, {"input_ids": self.tokenize(texts[start:start + batch_size])})[0]
                 for start in range(0, len(texts), batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def label_embeddings(self, labels: Sequence[str],
                         templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
        """One embedding per label, [labels, dim]: every template filled with the label, embedded,
        averaged and renormalized (CLIP's zero-shot recipe). Warns (UnknownWordsWarning) about
        labels that are mostly words the tokenizer does not know (the labels are judged, not the
        filled templates: a template's own words would hide an unknown label)."""
        labels, templates = _check_labels(labels), _check_templates(templates)
        self._warn_unknown(labels, "label")
        texts = [t.format(label) for label in labels for t in templates]
        embeds = self.embed_texts(texts).reshape(len(labels), len(templates), -1).mean(axis=1)
        return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)

    def classify(self, image: ImageLike, labels: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[tuple[str, float]]:
        """Zero-shot classification of one image: [(label, probability), ...], most likely first.
        Warns (UnknownWordsWarning) about labels the tokenizer mostly does not know."""
        label_embeds = self.label_embeddings(labels, templates)
        probs = self.probabilities(self.embed_images([image])[0] @ label_embeds.T)
        order = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
        return [(str(labels[i]), float(probs[i])) for i in order]


def _check_texts(texts: Sequence[str] | str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise PromptError("No texts were given; pass at least one.")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise PromptError(f"Text {i} is a {type(t).__name__}, not a string.")
    return texts


def _check_labels(labels: Sequence[str]) -> list[str]:
    if isinstance(labels, str):
        raise PromptError(f"labels must be a list of strings, got the string {labels!r}; "
                          f"split it, e.g. {labels.split(',')!r}.")
    labels = list(labels)
    if not labels:
        raise PromptError("No labels were given; pass at least one, e.g. ['door', 'staircase'].")
    bad = [label for label in labels if not isinstance(label, str) or not label.strip()]
    if bad:
        raise PromptError(f"Labels must be non-empty strings; got {bad!r}.")
    seen: set[str] = set()
    duplicated = sorted({label for label in labels if label in seen or seen.add(label)})
    if duplicated:
        raise PromptError(f"Labels must be distinct; duplicated: {', '.join(map(repr, duplicated))}.")
    return labels


def _check_templates(templates: Sequence[str]) -> list[str]:
    if isinstance(templates, str):
        templates = [templates]
    templates = list(templates)
    if not templates:
        raise PromptError("No templates were given; pass at least one, e.g. 'a photo of a {}.'.")
    bad = [t for t in templates if not isinstance(t, str) or t.count("{}") != 1]
    if bad:
        raise PromptError(f"Each template needs exactly one '{{}}' where the label goes; got {bad!r}.")
    try:
        for t in templates:
            t.format("x")
    except (IndexError, KeyError, ValueError) as e:
        raise PromptError(f"A template could not be filled ({e}); use '{{}}' for the label and "
                          f"'{{{{' / '}}}}' for literal braces.") from None
    return templates
