"""`Model`: a (vision-)language bundle opened for generation, with or without images (what
`mmedge.load` returns for every bundle but CLIP/SigLIP).

Builds the prompt (chat template, one image placeholder per image expanded to the model's image
token count), embeds the images' patches (mmedge.vision.inputs: the native patch-embedding kernel)
and runs the vision graph on them, writes the image features into the embedding
sequence at the image-token positions, and hands the result to the generation loop.

What lives elsewhere: bundle verification (mmedge.bundle), image decoding and preprocessing
(mmedge.vision.image, mmedge.vision.preprocess), the decode loop (mmedge.generation.loop).
"""

from __future__ import annotations

import time
from typing import Any, Iterator, Sequence

import numpy as np

from mmedge.backend import Device, open_session, resolve_device
from mmedge.bundle import Bundle
from mmedge.generation.decoder_session import Decoder
from mmedge.errors import PromptError
from mmedge.generation.loop import GenerationConfig, GenerationStats, generate_tokens, make_sampler
from mmedge.text import ChatTemplate, Tokenizer

Message = dict[str, Any]


class Model:
    """A loaded bundle. Create it with `mmedge.load`."""

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int | None = None):
        self.bundle = bundle
        self.device: Device = resolve_device(device)
        text = bundle.text
        self.tokenizer = Tokenizer(bundle.root / text["tokenizer_file"], text)
        self.chat_template = ChatTemplate(text.get("chat_template"), text.get("special_tokens", {}))
        self.context_length: int = text["context_length"]
        # A Gather: one thread, no spinning (see open_session).
        self._embed = open_session(bundle.path_of("embed"), self.device, 1, spinning=False)
        self._decoder = Decoder(open_session(bundle.path_of("decoder"), self.device, threads),
                                bundle.manifest["decoder"], self.device,
                                target=bundle.components["decoder"].get("target", "cpu"))
        self.image_spec = bundle.image
        self._vision = None
        self._vision_input = None
        if self.image_spec is not None:
            from mmedge.vision.inputs import VisionInput

            self._vision = open_session(bundle.path_of("vision"), self.device, threads,
                                        spinning=False)
            self._vision_input = VisionInput(bundle.root, bundle.manifest,
                                             self._vision.get_inputs()[0].name, threads=threads)
        self.last_stats = GenerationStats()

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
        [n_images, image_tokens, hidden] in the language model's embedding space."""
        return self._vision.run(None, self.vision_input(images))[0]

    def vision_input(self, images: Sequence[Any]) -> dict[str, np.ndarray]:
        """Images -> the vision graph's input: patch tokens [n, tokens, D] from the patch-embedding
        kernel (`pixel_values` for a bundle whose graph includes the patch embedding)."""
        self._require_vision()
        return self._vision_input(images)

    def preprocess(self, images: Sequence[Any]) -> np.ndarray:
        """Images -> `pixel_values` [n, 3, H, W] float32, as transformers' image processor makes
        them (what the reference model takes; the bundle's own path fuses this into the kernel)."""
        self._require_vision()
        return self._vision_input.preprocessor(images)

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

    def prompt_ids(self, messages: list[Message], n_images: int) -> list[int]:
        """Render the chat template, tokenize, and expand each image placeholder to the model's
        image-token count. Raises PromptError on a mismatch between placeholders and images."""
        if n_images and self.image_spec is None:
            raise PromptError("This bundle is text-only; it cannot take images. Drop the images, "
                              "or export a vision-language model.")
        text = self.chat_template.render(messages, add_generation_prompt=True)
        if not text.strip():
            raise PromptError("The prompt is empty. Say what you want the model to do.")
        ids = self.tokenizer.encode(text, add_special_tokens=not self.chat_template.available)
        if self.image_spec is None:
            return ids
        image_id = self.image_spec["image_token_id"]
        placeholders = sum(1 for i in ids if i == image_id)
        if placeholders != n_images:
            raise PromptError(f"The prompt has {placeholders} image placeholder(s) "
                              f"({self.image_spec['image_token']}) but {n_images} image(s) were "
                              f"given; give one image per placeholder.")
        n = self.image_spec["num_image_tokens"]
        expanded: list[int] = []
        for i in ids:
            expanded.extend([image_id] * n if i == image_id else [i])
        return expanded

    def prompt_embeddings(self, ids: list[int], features: np.ndarray | None) -> np.ndarray:
        """Token embeddings of `ids` with image features written into the image-token slots."""
        embeds = self.embed_tokens(np.asarray(ids, dtype=np.int64))
        if features is not None and len(features):
            slots = np.flatnonzero(np.asarray(ids) == self.image_spec["image_token_id"])
            embeds[slots] = features.reshape(-1, features.shape[-1]).astype(embeds.dtype)
        return embeds

    def prompt_logits(self, ids: list[int], images: Sequence[Any] = ()) -> np.ndarray:
        """Logits [vocab] at the last position of a prompt (used by export's parity check)."""
        features = self.encode_images(images) if images else None
        self._decoder.reset(len(ids))
        return self._decoder.forward(self.prompt_embeddings(ids, features))

    # -- the API ---------------------------------------------------------------------------------
    def generate(self, prompt: str | None = None, images: Sequence[Any] | None = None, *,
                 messages: list[Message] | None = None, system: str | None = None,
                 stream: bool = False, max_new_tokens: int = 256, temperature: float = 0.0,
                 top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0,
                 seed: int | None = None, stop: Sequence[str] = (),
                 ignore_eos: bool = False) -> str | Iterator[str]:
        """Answer a prompt (or a whole conversation given as `messages`), optionally about images.

        Greedy by default; set `temperature` (> 0) with `top_k`, `top_p`, `seed` to sample.
        With `stream=True` returns an iterator of text chunks; otherwise the whole answer.
        Stage timings of the last call are in `model.last_stats`.
        """
        images = list(images or [])
        if messages is None:
            if prompt is None or not prompt.strip():
                raise PromptError("The prompt is empty. Say what you want the model to do, e.g. "
                                  "--prompt \"Describe this image.\"")
            messages = self.build_messages(prompt, len(images), system)
        if max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be at least 1, not {max_new_tokens}.")
        config = GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty,
                                  seed=seed, stop=tuple(stop), ignore_eos=ignore_eos)
        chunks = self._run(messages, images, config)
        if stream:
            return chunks
        return "".join(chunks)

    def _run(self, messages: list[Message], images: list[Any],
             config: GenerationConfig) -> Iterator[str]:
        # Everything up to the first yield runs when the caller starts iterating; validate eagerly
        # so that errors surface at the call, not at the first `next()`.
        sampler = make_sampler(config)
        stats = self.last_stats = GenerationStats()
        started = time.perf_counter()
        ids = self.prompt_ids(messages, len(images))
        if len(ids) >= self.context_length:
            raise PromptError(f"The prompt is {len(ids)} tokens but the model's context holds "
                              f"{self.context_length}; shorten the prompt or use fewer images.")
        features = None
        if images:
            t = time.perf_counter()
            feed = self._vision_input(images)       # preprocessing and patch embedding, fused
            stats.preprocess_ms = (time.perf_counter() - t) * 1e3
            t = time.perf_counter()
            features = self._vision.run(None, feed)[0]
            stats.encode_ms = (time.perf_counter() - t) * 1e3
            stats.image_tokens = int(features.shape[0] * features.shape[1])
        embeds = self.prompt_embeddings(ids, features)
        return generate_tokens(self._decoder, self.embed_tokens, ids, embeds, self.tokenizer,
                               config, sampler, self.context_length, stats, started)
