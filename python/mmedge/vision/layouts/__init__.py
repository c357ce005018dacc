"""How one image becomes the image graph's tiles and the prompt's image tokens, one module per
model family's image layout (the manifest's image["layout"]):

- "single" (LLaVA-1.5, LLaVA-interleave): the whole image, resized and cropped to the tower's size,
  one placeholder -> `num_image_tokens` image tokens.
- "idefics3" (SmolVLM, SmolVLM2, Idefics3): the image resized by its longest edge, split into
  tower-sized tiles plus a downscaled global view; per tile `tokens_per_tile` image tokens between
  `<fake_token_around_image>` and `<row_i_col_j>` / `<global-img>` tags.
- "anyres" (LLaVA-OneVision): a grid of tiles chosen from the checkpoint's pinpoints plus the base
  image; the tile features are stitched into one map, unpadded and given a newline row marker.
- "qwen2vl" (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): the whole image resized to multiples of 28/32 px
  within a pixel budget, one variable-length run of the vision graph, M-RoPE positions for the LLM.

A layout gives, for each image, an `ImagePlan`: the tiles (uint8 RGB arrays, or PIL images for
"single" where the patch-embedding kernel does the resize), the token ids that replace the image's
placeholder in the prompt (the image token id marks a feature slot), and the number of slots.
`vision_feeds` gives the image graph's inputs, one feed per run (by default one tile a run), and
`features` (by default `assemble`) turns the runs' outputs into the features of those slots, in order.
Nothing here imports torch or `mmedge.export`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mmedge.errors import BundleError, PromptError

__all__ = ["ImagePlan", "ImageLayout", "image_layout", "LAYOUTS"]

# layout name -> "module:class" under this package
LAYOUTS = {
    "single": "single:SingleLayout",
    "idefics3": "idefics3:Idefics3Layout",
    "anyres": "anyres:AnyresLayout",
    "qwen2vl": "qwen2vl:QwenVLLayout",
}


MAX_LONGEST_EDGE = 4096   # transformers caps a resized image's longest edge there


@dataclass
class ImagePlan:
    tiles: list[Any]               # what the image graph's input is computed from, one per run
    token_ids: list[int]           # replaces the image's placeholder in the prompt ids
    num_slots: int                 # how many of token_ids are the image token (feature slots)
    grid: dict[str, Any] = field(default_factory=dict)   # the layout's own bookkeeping
    size: tuple[int, int] = (0, 0)                        # the image's (height, width)


class ImageLayout:
    """The interface; see the module doc. `tile_spec` is the manifest-style "image" dict every
    tile is preprocessed with (by `mmedge.vision.inputs.VisionInput`)."""

    name = ""

    def __init__(self, spec: Mapping[str, Any], tokenizer: Any, root: Path):
        self.spec = spec
        self.tokenizer = tokenizer
        self.root = root
        self.image_token_id = int(spec["image_token_id"])

    @property
    def tile_spec(self) -> Mapping[str, Any]:
        raise NotImplementedError

    def plan(self, image: Image.Image, *, tiles: bool = True) -> ImagePlan:
        """The image's plan; `tiles=False` leaves the tiles out (its tokens only, cheap: what
        counting a prompt's tokens needs)."""
        raise NotImplementedError

    def assemble(self, plan: ImagePlan, tile_features: np.ndarray) -> np.ndarray:
        """Image-graph outputs [tiles, tokens, hidden] -> slot features [num_slots, hidden]."""
        features = tile_features.reshape(-1, tile_features.shape[-1])
        if len(features) != plan.num_slots:
            raise BundleError(f"the image graph gave {len(features)} feature rows for an image "
                              f"with {plan.num_slots} image tokens; the bundle is damaged. "
                              "Re-run `mmedge export`.")
        return features

    def describe(self, plan: ImagePlan) -> str:
        """How the image was laid out, for error messages ("4x3 tiles + global view")."""
        return f"{plan.num_slots} image tokens"

    def vision_feeds(self, plan: ImagePlan, vision_input: Any) -> list[dict[str, np.ndarray]]:
        """The image graph's inputs for the plan's tiles, one run per tile: a tile's features do
        not depend on what shares its batch, and batching tiles only multiplies the attention
        buffers (measured on the SmolVLM-256M tower, 13 tiles, 2 threads: one tile a run 8.7 s at
        819 MB peak RSS, all 13 in one run 11.7 s at 2842 MB)."""
        (name, tiles), = vision_input(plan.tiles).items()
        return [{name: tiles[i:i + 1]} for i in range(len(tiles))]

    def features(self, plan: ImagePlan, outputs: list[list[np.ndarray]]) -> np.ndarray:
        """The runs' outputs (each run's list of graph outputs) -> the slots' features."""
        return self.assemble(plan, np.concatenate([run[0] for run in outputs]))


def tile_preprocessing(spec: Mapping[str, Any], tile: int) -> dict[str, Any]:
    """The per-tile preprocessing of a tiling layout: its tiles are already tile x tile uint8, so
    only rescale, normalize and the patch embedding remain (the kernel does them in one pass)."""
    return {
        "processor": "siglip", "do_convert_rgb": True, "do_resize": False,
        "size": {"height": tile, "width": tile}, "resample": int(spec["resample"]),
        "do_center_crop": False, "crop_size": None,
        "do_rescale": spec["do_rescale"], "rescale_factor": spec["rescale_factor"],
        "do_normalize": spec["do_normalize"], "image_mean": spec["image_mean"],
        "image_std": spec["image_std"], "image_size": [tile, tile],
        "patch_size": spec["patch_size"], "patch_embedding": spec.get("patch_embedding"),
    }


def resize_uint8(image: Image.Image, height: int, width: int, resample: Image.Resampling) -> Image.Image:
    """Pillow's resize on the uint8 image, as transformers' Pillow backend does (a same-size
    resize is a copy in Pillow, so skipping it changes nothing)."""
    if (image.height, image.width) == (height, width):
        return image
    return image.resize((width, height), resample=resample)


def image_layout(spec: Mapping[str, Any], tokenizer: Any, root: Path, *,
                 longest_edge: int | None = None, max_pixels: int | None = None) -> ImageLayout:
    """The layout a manifest's "image" entry names (bundles from before layouts: "single").
    `longest_edge` replaces a resizing layout's size["longest_edge"] (the caller's choice of
    fewer or more tiles, as transformers' processor takes `size=`); `max_pixels` replaces a
    Qwen-VL layout's pixel budget (fewer image tokens, faster)."""
    name = spec.get("layout", "single")
    if name not in LAYOUTS:
        raise BundleError(f"the bundle's image layout {name!r:.40} is not one this mmedge knows "
                          f"({', '.join(sorted(LAYOUTS))}); upgrade mmedge or re-export the bundle.")
    if max_pixels is not None:
        if name != "qwen2vl":
            raise PromptError("max_pixels applies to models that resize images within a pixel "
                              f"budget (Qwen-VL); this one's layout is {name!r}. Leave it out"
                              + (" (SmolVLM takes image_longest_edge)." if name == "idefics3" else "."))
        from .qwen2vl import QwenVLLayout

        return QwenVLLayout(spec, tokenizer, root, max_pixels=max_pixels)
    if longest_edge is not None:
        if "longest_edge" not in (spec.get("size") or {}):
            raise PromptError("image_longest_edge applies to models that resize images by their "
                              f"longest edge before tiling (SmolVLM); this one's layout is {name!r}"
                              + (", which resizes within a pixel budget: pass max_pixels instead."
                                 if name == "qwen2vl" else ", whose image size is fixed. Leave it out."))
        if isinstance(longest_edge, bool) or not isinstance(longest_edge, int) \
                or not 1 <= longest_edge <= MAX_LONGEST_EDGE:
            raise PromptError(f"image_longest_edge must be a whole number of pixels from 1 to "
                              f"{MAX_LONGEST_EDGE}, not {longest_edge!r}.")
        spec = {**spec, "size": {**spec["size"], "longest_edge": longest_edge}}
    module, cls = LAYOUTS[name].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)(spec, tokenizer, root)
