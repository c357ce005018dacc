"""The "single" image layout (LLaVA-1.5, LLaVA-interleave): the whole image is one tile, which the
patch-embedding kernel resizes and crops to the tower's size itself; one placeholder becomes
`num_image_tokens` image tokens."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from mmedge.vision.layouts import ImageLayout, ImagePlan


class SingleLayout(ImageLayout):
    name = "single"

    @property
    def tile_spec(self) -> Mapping[str, Any]:
        return self.spec

    def plan(self, image: Image.Image | None, *, tiles: bool = True) -> ImagePlan:
        """None: the plan of any image (its tokens do not depend on it), without tiles."""
        n = int(self.spec["num_image_tokens"])
        return ImagePlan(tiles=[image] if image is not None and tiles else [],
                         token_ids=[self.image_token_id] * n, num_slots=n,
                         size=(0, 0) if image is None else (image.height, image.width))
