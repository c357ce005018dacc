"""The bundle's tokenizer: encode and decode as transformers does with the same tokenizer.json.

`Tokenizer` encodes/decodes like the transformers tokenizer whose `save_pretrained` wrote the
bundle's tokenizer.json (transformers rebuilds some tokenizers from vocab and merges, so the
exporter must save the tokenizer transformers built, not copy the Hub's file), using only
`tokenizers`. The chat template, streaming detokenizer and stop strings are its neighbours in
`mmedge.text`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import tokenizers

from mmedge.errors import BundleError, PromptError

__all__ = ["Tokenizer"]


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
        self._literal: tokenizers.Tokenizer | None = None
        self._control: dict[int, str] = {i: t.content for i, t in backend.get_added_tokens_decoder().items()
                                         if t.special}
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
    def plain_decode(self) -> bool:
        """Whether `tokenizers.decoders.DecodeStream` streams exactly what `decode` gives: no
        transformers Python-side edits, and no ByteFallback byte tokens (DecodeStream emits a run
        of bytes once it forms characters, while a later byte can turn the whole run into U+FFFDs
        in the full decode)."""
        return not self._word_suffix and not self._clean_up and not self._byte_ids

    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (`len(hf_tokenizer)`)."""
        return self._backend.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._backend.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(int(token_id))

    def encode(self, text: str, add_special_tokens: bool = False, *,
               parse_special: bool = True) -> list[int]:
        """Token ids of `text`. With `parse_special` (transformers' default) special tokens written
        in the text become their ids; without it they are spelled out as ordinary text, which is
        what text typed by a user must be. `add_special_tokens` runs the tokenizer's
        post-processor (e.g. prepends BOS)."""
        if not isinstance(text, str):
            raise PromptError(f"Can only tokenize a string, got {type(text).__name__}.")
        backend = self._backend if parse_special else self._literal_backend()
        return backend.encode(text, add_special_tokens=add_special_tokens).ids

    def control_tokens_in(self, text: str) -> list[str]:
        """The special tokens (`<|im_start|>`, `<image>`, ...) that `text` would encode to if its
        special-token spellings were parsed."""
        ids = self._backend.encode(text, add_special_tokens=False).ids
        return [self._control[i] for i in ids if i in self._control]

    def _literal_backend(self) -> tokenizers.Tokenizer:
        # A second backend with special-token parsing off (a per-call toggle of one backend's
        # `encode_special_tokens` would race between threads).
        if self._literal is None:
            literal = tokenizers.Tokenizer.from_str(self._backend.to_str())
            literal.encode_special_tokens = True
            self._literal = literal
        return self._literal

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
            text = clean_up_tokenization(text)
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


def clean_up_tokenization(text: str) -> str:
    for old, new in _CLEAN_UP:
        text = text.replace(old, new)
    return text
