"""Image features kept by content, so an image seen again (the next turn of a conversation, the
same frame asked a second question) skips preprocessing and the vision graph.

Keys hash the decoded RGB pixels (not the file name or the bytes of the file: the same photo
re-encoded or passed as an array is the same image to the model). Entries are evicted least
recently used first, by count and by bytes.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np
from PIL import Image

__all__ = ["ImageFeatureCache", "image_key"]


def image_key(image: Image.Image) -> str:
    """A content hash of a loaded RGB image (mode, size and pixels)."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}:{image.width}x{image.height}:".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


class ImageFeatureCache:
    """A thread-safe LRU of {image_key: features [tokens, hidden]}."""

    def __init__(self, max_images: int = 16, max_bytes: int = 256 << 20):
        self.max_images, self.max_bytes = max_images, max_bytes
        self._entries: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            features = self._entries.get(key)
            if features is not None:
                self._entries.move_to_end(key)
            return features

    def put(self, key: str, features: np.ndarray) -> None:
        if self.max_images < 1 or features.nbytes > self.max_bytes:
            return
        features = np.array(features, copy=True)
        features.setflags(write=False)  # shared between calls: nobody may edit it in place
        with self._lock:
            old = self._entries.pop(key, None)
            self._bytes -= 0 if old is None else old.nbytes
            self._entries[key] = features
            self._bytes += features.nbytes
            while len(self._entries) > self.max_images or self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= evicted.nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0
