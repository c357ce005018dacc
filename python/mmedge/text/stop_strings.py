"""Stop strings: cut a stream of text before the first occurrence of any of them."""

from __future__ import annotations

from collections.abc import Iterable

from mmedge.errors import MMEdgeError

__all__ = ["StopStrings", "partial_match_len"]



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
        keep = partial_match_len(text, self.stops)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep], False

    def flush(self, text: str = "") -> str:
        """End of stream: feed the last `text`, and return it with everything held back."""
        out, stopped = self.feed(text)
        if not stopped:
            out += self._held
        self._held = ""
        return out


def partial_match_len(text: str, patterns: Iterable[str]) -> int:
    """Length of the longest suffix of `text` that is a proper prefix of one of `patterns`."""
    longest = max((len(p) for p in patterns), default=0)
    for k in range(min(len(text), longest - 1), 0, -1):
        tail = text[-k:]
        if any(p.startswith(tail) for p in patterns):
            return k
    return 0
