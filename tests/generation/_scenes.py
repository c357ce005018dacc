"""Test pictures shared by the generation tests (imported as `_scenes`: pytest puts this folder on
sys.path for its test modules)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def scene(seed: int, size: tuple[int, int]) -> Image.Image:
    """A random RGB picture (width, height) with a coloured block, different per seed."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    pixels[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = rng.integers(0, 256, 3, dtype=np.uint8)
    return Image.fromarray(pixels)
