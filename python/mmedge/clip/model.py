"""CLIP/SigLIP bundles at run time: image and text embeddings, zero-shot classification.

`mmedge.load(bundle)` returns a `ClipModel` when the bundle's family is "clip" (see
`mmedge.export.families.clip` for what such a bundle holds):

    model = mmedge.load("clip-bundle/")
    model.embed_images(["a.jpg", "b.jpg"])          # float32 [2, dim], L2-normalized
    model.embed_texts(["a door", "a staircase"])    # float32 [2, dim], L2-normalized
    model.classify("a.jpg", ["door", "staircase", "wall"])   # [(label, prob), ...] best first

Scores are `logit_scale * cos + logit_bias`; CLIP turns them into probabilities with a softmax over
the labels, SigLIP with a sigmoid per label (its probabilities need not sum to 1). Image
embeddings are cached in memory by the sha256 of the image's file bytes (paths, bytes) or pixels
(PIL images, arrays), so a file embedded twice runs the image graph once.

Not here: image decoding (mmedge.vision.image), preprocessing and patch embedding (mmedge.vision.inputs),
the export.
"""

from __future__ import annotations

import hashlib
import os
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

__all__ = ["ClipModel", "DEFAULT_TEMPLATES"]

DEFAULT_TEMPLATES = ("a photo of a {}.",)
CACHE_SIZE = 10_000  # image embeddings kept in memory (a 512-dim embedding is 2 KB)


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

    def embed_texts(self, texts: Sequence[str] | str, batch_size: int = 64) -> np.ndarray:
        """Texts -> float32 [n, dim], L2-normalized."""
        texts = _check_texts(texts)
        parts = [self._text.run(None, {"input_ids": self.tokenize(texts[start:start + batch_size])})[0]
                 for start in range(0, len(texts), batch_size)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    def label_embeddings(self, labels: Sequence[str],
                         templates: Sequence[str] = DEFAULT_TEMPLATES) -> np.ndarray:
        """One embedding per label, [labels, dim]: every template filled with the label, embedded,
        averaged and renormalized (CLIP's zero-shot recipe)."""
        labels, templates = _check_labels(labels), _check_templates(templates)
        texts = [t.format(label) for label in labels for t in templates]
        embeds = self.embed_texts(texts).reshape(len(labels), len(templates), -1).mean(axis=1)
        return embeds / np.linalg.norm(embeds, axis=-1, keepdims=True)

    def classify(self, image: ImageLike, labels: Sequence[str],
                 templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[tuple[str, float]]:
        """Zero-shot classification of one image: [(label, probability), ...], most likely first."""
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
