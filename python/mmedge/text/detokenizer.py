"""Streaming detokenization: token ids in one at a time, text out as soon as it is final.

Everything `StreamingDetokenizer` emits, joined, equals `Tokenizer.decode` of all the ids, and a
chunk never ends inside a multi-byte character.
"""

from __future__ import annotations

from mmedge.text.stop_strings import partial_match_len
from mmedge.text.tokenizer import Tokenizer, clean_up_tokenization

__all__ = ["StreamingDetokenizer"]

_REPLACEMENT_CHAR = "\ufffd"



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
            keep = 0 if final else partial_match_len(text, (tok._word_suffix,))
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
            text = clean_up_tokenization(text[:cut])
        return text


def _clean_up_cut(text: str) -> int:
    """Largest j such that `clean_up_tokenization(text[:j] + rest) == clean(text[:j]) + clean(rest)`
    for any `rest`: no pattern (a space and up to 3 more characters) can start in text[j-3:j]."""
    j = len(text)
    while j > 0 and " " in text[max(0, j - 3):j]:
        j -= 1
    return j


class DecodeStreamDetokenizer:
    """`StreamingDetokenizer`'s contract on `tokenizers.decoders.DecodeStream`, the tokenizers
    library's own streaming decoder (it holds back incomplete UTF-8 and byte-fallback runs and
    keeps a token's leading space), for tokenizers whose decode needs none of transformers'
    Python-side edits: the byte-level BPE and SentencePiece tokenizers of LLMs.

    DecodeStream never emits text that would end in an incomplete character, so at the end of a
    stream whose last bytes never completed, `flush` returns what the full decode has beyond what
    was emitted (its U+FFFDs), and joined chunks still equal `Tokenizer.decode`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        if not tokenizer.plain_decode:
            raise ValueError("this tokenizer's decode has Python-side edits; use StreamingDetokenizer")
        self._tok = tokenizer
        self._skip_special = skip_special_tokens
        self._reset()

    def _reset(self) -> None:
        from tokenizers.decoders import DecodeStream

        self._stream = DecodeStream(skip_special_tokens=self._skip_special)
        self._ids: list[int] = []
        self._emitted: list[str] = []

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        self._ids.append(token_id)
        chunk = self._stream.step(self._tok._backend, token_id) or ""
        self._emitted.append(chunk)
        return chunk

    def flush(self) -> str:
        full = self._tok.decode(self._ids, skip_special_tokens=self._skip_special)
        emitted = "".join(self._emitted)
        self._reset()
        if not full.startswith(emitted):  # never seen; the contract says why it matters
            raise AssertionError(f"DecodeStream emitted {emitted!r}, not a prefix of {full!r}")
        return full[len(emitted):]


def streaming_detokenizer(tokenizer: Tokenizer, skip_special_tokens: bool = True):
    """The streaming detokenizer for `tokenizer`: DecodeStream where it does the whole job, the
    hand-written `StreamingDetokenizer` where transformers edits decoded text in Python (CLIP's
    end-of-word suffix, `clean_up_tokenization_spaces`)."""
    if tokenizer.plain_decode:
        return DecodeStreamDetokenizer(tokenizer, skip_special_tokens)
    return StreamingDetokenizer(tokenizer, skip_special_tokens)
