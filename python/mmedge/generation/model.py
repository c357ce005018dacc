"""`Model`: a (vision-)language bundle opened for generation, with or without images (what
`mmedge.load` returns for every bundle but CLIP/SigLIP).

Builds the prompt (chat template, message text kept as text, one image placeholder per image
expanded to the image's tokens by the family's image layout, see mmedge.vision.layouts), turns
each image into features (its tiles through the native patch-embedding kernel, then the vision
graph, then the layout's assembly; features are cached by image content), writes them into the
embedding sequence at the image-token positions, and hands the result to the generation loop in a
KV cache of the call's own.

Several generations never share state: each call takes a cache from the model's pool, at most
`parallel` at once (a further call waits, or is refused with a `BusyError` when waiting could
never end). A finished call leaves its cache warm, so the next turn of a conversation prefills
only what is new (`last_stats.reused_tokens`).

What lives elsewhere: bundle verification (mmedge.bundle), image decoding and preprocessing
(mmedge.vision), the KV caches (mmedge.generation.decoder_session), the decode loop
(mmedge.generation.loop).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Hashable, Sequence

import numpy as np
from PIL import Image

from mmedge.backend import Device, open_session, resolve_device
from mmedge.bundle import Bundle
from mmedge.errors import BundleError, PromptError
from mmedge.generation.decoder_session import CachePool, DecoderSession
from mmedge.generation.loop import (Generation, GenerationConfig, GenerationStats, generate_tokens,
                                    make_sampler)
from mmedge.text import ChatTemplate, StopStrings, Tokenizer
from mmedge.text.conversation import encode_conversation

Message = dict[str, Any]
# One image, as `generate` accepts it besides a list of them.
_ONE_IMAGE = (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray)


class Model:
    """A loaded bundle. Create it with `mmedge.load`.

    `parallel`: how many generations may be in progress at once (each holds a KV cache of its
    own; default 1). `queue_timeout`: how long a call waits for a free one (None: as long as it
    takes). `image_cache`: how many images' features to keep for reuse (0: none).
    """

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None, *,
                 parallel: int = 1, queue_timeout: float | None = None, image_cache: int = 16,
                 strict_device: bool = False, image_longest_edge: int | None = None,
                 max_pixels: int | None = None):
        from mmedge.vision.feature_cache import ImageFeatureCache

        self.bundle = bundle
        self.device: Device = resolve_device(device, strict=strict_device)
        text = bundle.text
        self.tokenizer = Tokenizer(bundle.root / text["tokenizer_file"], text)
        self.chat_template = ChatTemplate(text.get("chat_template"), text.get("special_tokens", {}))
        self.context_length: int = text["context_length"]
        # A Gather: one thread, no spinning (see open_session).
        self._embed = open_session(bundle.path_of("embed"), self.device, 1, spinning=False)
        self._decoder = DecoderSession(open_session(bundle.path_of("decoder"), self.device, threads),
                                       bundle.manifest["decoder"], self.device,
                                       target=bundle.components["decoder"].get("target", "cpu"))
        self.caches = CachePool(self._decoder, parallel=parallel, timeout=queue_timeout)
        self.image_spec = bundle.image
        for knob, value in (("image_longest_edge", image_longest_edge), ("max_pixels", max_pixels)):
            if value is not None and self.image_spec is None:
                raise PromptError(f"{knob} was given but this bundle is text-only.")
        self._vision = None
        self._vision_input = None
        self.layout = None
        self.image_features = ImageFeatureCache(max_images=image_cache)
        if self.image_spec is not None:
            from mmedge.vision.inputs import VisionInput
            from mmedge.vision.layouts import image_layout

            self.layout = image_layout(self.image_spec, self.tokenizer, bundle.root,
                                       longest_edge=image_longest_edge, max_pixels=max_pixels)
            self._vision = open_session(bundle.path_of("vision"), self.device, threads,
                                        spinning=False)
            self._vision_input = VisionInput(bundle.root, bundle.manifest,
                                             self._vision.get_inputs()[0].name, threads=threads,
                                             spec=self.layout.tile_spec)
        self.last_stats = GenerationStats()
        self._stats_lock = threading.Lock()
        self._template_needs_parts = _drops_string_content(self.chat_template)

    # -- properties a caller may want ---------------------------------------------------------
    @property
    def accepts_images(self) -> bool:
        return self._vision is not None

    def info(self) -> dict[str, Any]:
        m = self.bundle.manifest
        return {"family": m["family"], "source": m.get("exporter", {}).get("source"),
                "device": self.device.name, "device_note": self.device.note,
                "quantization": m.get("quantization", {}), "context_length": self.context_length,
                "accepts_images": self.accepts_images}

    # -- building blocks ------------------------------------------------------------------------
    def embed_tokens(self, ids: np.ndarray) -> np.ndarray:
        """Token ids [n] -> embeddings [n, hidden] (float32)."""
        out = self._embed.run(None, {"input_ids": ids.reshape(1, -1).astype(np.int64)})[0]
        return out[0]

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Images (paths, bytes, PIL images or HxWxC arrays) -> features
        [n_images, image_tokens, hidden] in the language model's embedding space (images whose
        layouts differ in token count: use `image_features_of` one by one)."""
        loaded, _ = self._load_images(_image_list(images))
        features = [self._encode_one(image, GenerationStats()) for image in loaded]
        if len({f.shape for f in features}) > 1:
            raise PromptError("These images take different numbers of image tokens in this model; "
                              "encode them one at a time with image_features_of.")
        return np.stack(features)

    def image_features_of(self, image: Any) -> np.ndarray:
        """One image -> its features [image_tokens, hidden], as they enter the prompt."""
        loaded, _ = self._load_images([image])
        return self._encode_one(loaded[0], GenerationStats())

    def plan_image(self, image: Any, *, tiles: bool = True):
        """How the image layout splits one image into tiles and prompt tokens (an ImagePlan;
        `tiles=False`: only its tokens, without resizing anything)."""
        self._require_vision()
        if not isinstance(image, Image.Image):
            image = self._load_images([image])[0][0]
        return self.layout.plan(image, tiles=tiles)

    def vision_input(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        """Images -> the vision graph's input for all their tiles: patch tokens [tiles, tokens, D]
        from the patch-embedding kernel (`pixel_values` for a bundle whose graph includes the
        patch embedding)."""
        return self._vision_input(self._tiles(images))

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """Images -> `pixel_values` [tiles, 3, H, W] float32 for all their tiles in order (one
        per image in the "single" layout), as transformers' image processor makes them (what the
        reference model takes; the bundle's own path fuses this into the kernel). Qwen-VL:
        the processor's patch rows [patches, 3 * T * P * P] of every image, in order."""
        if hasattr(self.layout, "pixel_values"):
            return np.concatenate([self.layout.pixel_values(self.plan_image(image))
                                   for image in _image_list(images)])
        return self._vision_input.preprocessor(self._tiles(images))

    def _tiles(self, images: Sequence[Any]) -> list[Any]:
        self._require_vision()
        return [tile for image in _image_list(images) for tile in self.plan_image(image).tiles]

    def _require_vision(self) -> None:
        if not self.accepts_images:
            raise PromptError("This bundle has no vision component: it is a text-only model. "
                              "Drop the images, or export a vision-language model.")

    def build_messages(self, prompt: str, n_images: int, system: str | None = None) -> list[Message]:
        """One user turn; image parts first, as LLaVA-style templates expect."""
        if n_images:
            content: Any = [{"type": "image"} for _ in range(n_images)]
            content.append({"type": "text", "text": prompt})
        else:
            content = prompt
        messages = [{"role": "system", "content": system}] if system else []
        return messages + [{"role": "user", "content": content}]

    def prompt_ids(self, messages: list[Message], images: Sequence[Any] | int = (), *,
                   control_tokens_in_text: bool = False) -> list[int]:
        """Render the chat template, tokenize (message text stays text: see
        mmedge.text.conversation), and expand each image placeholder to that image's tokens
        (`images`: the images or their `plan_image` plans, in order; for a bundle whose images
        all take the same tokens, their count will do). Raises PromptError on a mismatch between
        placeholders and images."""
        plans = self._plans(images)
        if plans and self.image_spec is None:
            raise PromptError("This bundle is text-only; it cannot take images. Drop the images, "
                              "or export a vision-language model.")
        if self._template_needs_parts:
            messages = [_as_parts(message) for message in messages]
        ids = encode_conversation(self.chat_template, self.tokenizer, messages,
                                  control_tokens_in_text=control_tokens_in_text)
        if self.image_spec is None:
            return ids
        image_id = self.image_spec["image_token_id"]
        placeholders = sum(1 for i in ids if i == image_id)
        if placeholders != len(plans):
            raise PromptError(f"The prompt has {placeholders} image placeholder(s) "
                              f"({self.image_spec['image_token']}) but {len(plans)} image(s) were "
                              f"given; give one image per placeholder.")
        expanded: list[int] = []
        pending = iter(plans)
        for i in ids:
            expanded.extend(next(pending).token_ids if i == image_id else [i])
        return expanded

    def _plans(self, images: Sequence[Any] | int) -> list[Any]:
        from mmedge.vision.layouts import ImagePlan

        if isinstance(images, (int, np.integer)) and not isinstance(images, bool):
            if images:
                self._require_vision()
            if images and self.layout.name != "single":
                raise PromptError("This model's images take a number of tokens that depends on "
                                  "their size; pass the images themselves, not their count.")
            return [self.layout.plan(None) for _ in range(int(images))] if images else []
        return [image if isinstance(image, ImagePlan) else self.plan_image(image, tiles=False)
                for image in _image_list(images)]

    def count_tokens(self, messages: list[Message], images: Sequence[Any] = ()) -> int:
        """How many positions of the context a conversation takes (images included)."""
        return len(self.prompt_ids(messages, images))

    def prompt_embeddings(self, ids: Sequence[int], features: np.ndarray | None) -> np.ndarray:
        """Token embeddings of `ids` with image features [slots, hidden] written, in order, into
        the image-token slots."""
        return self._prompt_feed(ids, features)[0]

    def _prompt_feed(self, ids: Sequence[int], features: np.ndarray | None,
                     positions: np.ndarray | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """`prompt_embeddings`, and the decoder's other inputs for those positions: M-RoPE
        `positions` [3, len(ids)] where given, and DeepStack's features (the columns of
        `features` past the hidden size) at the image slots, zeros elsewhere."""
        embeds = self.embed_tokens(np.asarray(ids, dtype=np.int64))
        extra: dict[str, np.ndarray] = {}
        if positions is not None:
            extra["positions"] = positions
        layers = self._decoder.deepstack_layers
        if layers:
            extra["deepstack"] = np.zeros((layers,) + embeds.shape, embeds.dtype)
        if features is not None and len(features):
            features = features.reshape(-1, features.shape[-1])
            hidden = embeds.shape[-1]
            slots = np.flatnonzero(np.asarray(ids) == self.image_spec["image_token_id"])
            embeds[slots] = features[:, :hidden].astype(embeds.dtype)
            if layers:
                stacked = features[:, hidden:].reshape(len(features), layers, hidden)
                extra["deepstack"][:, slots] = stacked.transpose(1, 0, 2)
        return embeds, extra

    def prompt_logits(self, ids: list[int], images: Sequence[Any] = ()) -> np.ndarray:
        """Logits [vocab] at the last position of a prompt, prefilled from scratch (used by
        export's parity check)."""
        features = np.concatenate([self.image_features_of(image) for image in images]) \
            if images else None
        embeds, extra = self._prompt_feed(ids, features, self._rope_positions(ids, images))
        cache = self._decoder.new_cache(len(ids))
        return cache.forward(embeds, ids, **extra)

    def _rope_positions(self, ids: Sequence[int], images: Sequence[Any]) -> np.ndarray | None:
        """M-RoPE positions [3, len(ids)] of a whole prompt (None for other decoders)."""
        if not self._decoder.mrope:
            return None
        if self.layout is None or not hasattr(self.layout, "rope_positions"):
            raise BundleError("the decoder takes M-RoPE positions but the bundle's image layout "
                              "does not define them; the bundle is damaged. Re-run `mmedge export`.")
        return self.layout.rope_positions(ids, self._plans(images))

    # -- the API ---------------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, images: Sequence[Any] | Any | None = None, *,
                 messages: list[Message] | None = None, system: str | None = None,
                 stream: bool = False, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed: int | None = None, stop: Sequence[str] = (), ignore_eos: bool = False,
                 reuse: bool = True, control_tokens_in_text: bool = False) -> str | Generation:
        """Answer a prompt (or a whole conversation given as `messages`), optionally about images
        (one image, or a list: paths, bytes, PIL images or HxWxC arrays).

        Greedy by default; set `temperature` (> 0) with `top_k`, `top_p`, `seed` to sample.
        With `stream=True` returns a `Generation`, an iterator of text chunks (close it, or let
        it go, to stop early); otherwise the whole answer. `reuse=False` prefills the whole prompt
        and encodes every image afresh (benchmarks). Text in messages is always text; pass
        `control_tokens_in_text=True` only for prompts whose control tokens are meant as such.
        Stage timings of the call are in `model.last_stats` (and a stream's own `stats`).
        """
        images = _image_list(images)
        if messages is None:
            if not isinstance(prompt, str):
                raise PromptError(f"The prompt must be a string, not {type(prompt).__name__}"
                                  + (" (pass a conversation as messages=[...])"
                                     if isinstance(prompt, (list, tuple)) else "") + ".")
            if not prompt.strip():
                raise PromptError("The prompt is empty. Say what you want the model to do, e.g. "
                                  "--prompt \"Describe this image.\"")
            if system is not None and not isinstance(system, str):
                raise PromptError(f"The system prompt must be a string, not {type(system).__name__}.")
            messages = self.build_messages(prompt, len(images), system)
        elif prompt is not None:
            raise PromptError("Give a prompt or messages, not both.")
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) \
                or max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be a whole number of at least 1, not {max_new_tokens!r}.")
        if isinstance(stop, str):
            stop = (stop,)
        config = GenerationConfig(max_new_tokens=int(max_new_tokens), temperature=temperature,
                                  top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                  seed=seed, stop=tuple(stop), ignore_eos=ignore_eos)
        generation = self._start(messages, images, config, reuse, control_tokens_in_text)
        if stream:
            return generation
        with generation:
            return generation.text()

    def _start(self, messages: list[Message], images: list[Any], config: GenerationConfig,
               reuse: bool, control_tokens_in_text: bool) -> Generation:
        """Everything before the first token, done at the call (so errors surface there): the
        prompt, a KV cache, the images' features and the prompt embeddings it does not hold."""
        sampler = make_sampler(config)
        StopStrings(config.stop)  # refuses bad stop strings here rather than at the first token
        stats = GenerationStats()
        with self._stats_lock:
            self.last_stats = stats
        started = time.perf_counter()
        loaded, image_keys = self._load_images(images)
        plans = [self.layout.plan(image, tiles=False) for image in loaded]   # tokens only
        ids = self.prompt_ids(messages, plans, control_tokens_in_text=control_tokens_in_text)
        if len(ids) >= self.context_length:
            raise PromptError(self._too_long(len(ids), plans))
        keys = self._position_keys(ids, image_keys, plans)
        room = min(config.max_new_tokens, self.context_length - len(ids))
        cache, reused = self.caches.acquire(keys, len(ids) + room, reuse=reuse)
        try:
            features = self._features_from(reused, ids, loaded, plans, image_keys, stats, reuse)
            positions = self._rope_positions(ids, plans)
            embeds, extra = self._prompt_feed(ids[reused:], features,
                                              None if positions is None else positions[:, reused:])
        except BaseException:
            cache.truncate(0)
            self.caches.release(cache)
            raise
        chunks = generate_tokens(cache, self.embed_tokens, ids, embeds, keys[reused:], self.tokenizer,
                                 config, sampler, self.context_length, stats, started, extra)
        return Generation(chunks, stats, lambda: self.caches.release(cache))

    def _load_images(self, images: list[Any]) -> tuple[list[Image.Image], list[str]]:
        if not images:
            return [], []
        from mmedge.vision.feature_cache import image_key
        from mmedge.vision.image import load_image

        self._require_vision()
        loaded = [load_image(image, max_pixels=self._vision_input.preprocessor.max_pixels)
                  for image in images]
        return loaded, [image_key(image) for image in loaded]

    def _too_long(self, n_ids: int, plans: list[Any]) -> str:
        message = (f"The prompt is {n_ids} tokens but the model's context holds "
                   f"{self.context_length}")
        image_tokens = sum(len(plan.token_ids) for plan in plans)
        if not image_tokens:
            return message + "; shorten the prompt."
        described = [self.layout.describe(plan) for plan in plans]
        if len(set(described)) == 1 and len(plans) > 1:
            each = f"{len(plans)} images, each {described[0]}"
        else:
            each = "; ".join(f"image {k + 1}: {d}" for k, d in enumerate(described))
        advice = "Use fewer images or shorten the prompt"
        edge, tile = getattr(self.layout, "longest_edge", None), getattr(self.layout, "tile", None)
        if edge and tile and edge > tile:   # a tiling layout that could take fewer tiles
            smaller = max(tile, edge // 2)
            advice += (f" or give each image fewer tiles: mmedge.load(..., image_longest_edge="
                       f"{smaller}) (--image-longest-edge {smaller}); images are now resized to "
                       f"{edge} px")
        budget = getattr(self.layout, "max_pixels", None)
        if budget:   # a pixel-budget layout (Qwen-VL): a smaller budget, fewer tokens
            largest = max(plan.grid["resized"][0] * plan.grid["resized"][1] for plan in plans)
            smaller = max(self.layout.factor ** 2, self.layout.min_pixels, largest // 4)
            advice += (f" or resize images within a smaller pixel budget: mmedge.load(..., "
                       f"max_pixels={smaller}) (--max-pixels {smaller}) takes about a quarter of "
                       f"the tokens; the budget is now {budget} px")
        return f"{message}, {image_tokens} of them for the images ({each}). {advice}."

    def _position_keys(self, ids: list[int], image_keys: list[str], plans: list[Any]) -> list[Hashable]:
        """What each prompt position holds: its token id, or (image hash, feature index)."""
        if not image_keys:
            return list(ids)
        image_id = self.image_spec["image_token_id"]
        owner = [(k, s) for k, plan in enumerate(plans) for s in range(plan.num_slots)]
        keys: list[Hashable] = []
        slot = 0
        for i in ids:
            if i == image_id:
                image, index = owner[slot]
                keys.append((image_keys[image], index))
                slot += 1
            else:
                keys.append(i)
        return keys

    def _features_from(self, start: int, ids: list[int], images: list[Image.Image],
                       plans: list[Any], image_keys: list[str], stats: GenerationStats,
                       reuse: bool) -> np.ndarray | None:
        """Features [slots, hidden] for the image slots at positions >= `start` (an image the
        cache holds entirely is not encoded again), from the feature cache where it has them."""
        if not images:
            return None
        # Slots in the reused prefix, then the image that holds the first slot after it.
        reused_slots = int(np.count_nonzero(np.asarray(ids[:start]) == self.image_spec["image_token_id"]))
        first, skip = len(images), 0
        for index, seen in enumerate(np.cumsum([0] + [plan.num_slots for plan in plans])[:-1]):
            if reused_slots < seen + plans[index].num_slots:
                first, skip = index, reused_slots - int(seen)
                break
        parts = []
        for index in range(first, len(images)):
            features = self.image_features.get(image_keys[index]) if reuse else None
            if features is None:
                features = self._encode_one(images[index], stats)
                self.image_features.put(image_keys[index], features)
            else:
                stats.cached_images += 1
            parts.append(features)
        stats.image_tokens = sum(plan.num_slots for plan in plans)
        if not parts:       # every image lies in the reused prefix
            return None
        return np.concatenate(parts)[skip:]

    def _encode_one(self, image: Image.Image, stats: GenerationStats) -> np.ndarray:
        # The layout decides the runs (one tile a run: a tile's features then do not depend on
        # what shares its batch, so a cached image's features equal a fresh encode's).
        t = time.perf_counter()
        plan = self.layout.plan(image)                               # the layout's resizes and tiles
        feeds = self.layout.vision_feeds(plan, self._vision_input)  # preprocessing + patch embedding
        stats.preprocess_ms += (time.perf_counter() - t) * 1e3
        t = time.perf_counter()
        features = self.layout.features(plan, [self._vision.run(None, feed) for feed in feeds])
        stats.encode_ms += (time.perf_counter() - t) * 1e3
        return features


def _image_list(images: Sequence[Any] | Any | None) -> list[Any]:
    """`images` as a list: None, one image, or a list/tuple of them."""
    if images is None:
        return []
    if isinstance(images, _ONE_IMAGE):
        if isinstance(images, np.ndarray) and images.ndim == 4:
            raise PromptError("images is a 4-D array; pass a list of HxWxC frames (one image "
                              "per item), or one HxWxC frame.")
        return [images]
    if isinstance(images, (list, tuple)):
        return list(images)
    raise PromptError(f"images must be an image (a path, bytes, a PIL image or an HxWxC array) or "
                      f"a list of them, not {type(images).__name__}.")


def _drops_string_content(template: ChatTemplate) -> bool:
    """Whether the chat template renders only list-form content ([{"type": "text", ...}]) and
    silently drops a plain string (SmolVLM's reads message['content'][0]['type'])."""
    if not template.available:
        return False
    probe = "\ue000mmedge-probe\ue001"
    try:
        text = template.render([{"role": "user", "content": probe}], add_generation_prompt=True)
    except Exception:   # noqa: BLE001 - a template that fails on strings needs parts as well
        return True
    return probe not in text


def _as_parts(message: Message) -> Message:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return {**message, "content": [{"type": "text", "text": content}]}
    return message
