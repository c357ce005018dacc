"""Split a vision tower at its patch embedding: the graphs start after it, the runtime computes it.

Every image in an mmedge bundle goes through `mmedge.kernels.patch_embed` (resize, crop, normalize,
patchify and project in one pass from the uint8 frame; see csrc/patch_embed.h) on every backend. So
the exported image graphs take `patch_tokens` float32 [batch, tokens, D], what the tower's
embeddings module outputs (patch conv + bias, class token, position embeddings), and the bundle
stores those weights in `patch_embedding.safetensors` (fp32, whatever the graphs' precision: they
are small and the kernel computes in fp32).

`tokens_input(model)` swaps the tower's embeddings for a pass-through while a graph is traced, so
the families' own wrappers (LLaVA's tower + projector, CLIP's image tower) export unchanged.
Handles CLIP and SigLIP towers (`CLIPVisionEmbeddings`, `SiglipVisionEmbeddings`), and refuses a
tower whose embeddings do anything else.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mmedge.errors import ExportError, UnsupportedModelError

TOKENS_INPUT = "patch_tokens"
PATCH_FILE = "patch_embedding.safetensors"


class _TokensPassThrough(torch.nn.Module):
    """Stands in for a tower's embeddings module: its input already is the embedded tokens."""

    def forward(self, tokens: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        return tokens


def vision_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The one module of `model` whose `embeddings` turn pixels into patch tokens."""
    towers = [m for m in model.modules()
              if hasattr(getattr(m, "embeddings", None), "patch_embedding")]
    if len(towers) != 1:
        raise UnsupportedModelError(
            f"{type(model).__name__} has {len(towers)} vision towers with a patch embedding; "
            "mmedge exports models with exactly one (CLIP, SigLIP, LLaVA).")
    embeddings = towers[0].embeddings
    conv = embeddings.patch_embedding
    if not isinstance(conv, torch.nn.Conv2d) or conv.in_channels != 3 or conv.stride != conv.kernel_size \
            or conv.kernel_size[0] != conv.kernel_size[1] or conv.padding not in ((0, 0), "valid"):
        raise UnsupportedModelError(
            f"the patch embedding of {type(embeddings).__name__} is not a square stride-P conv over "
            f"3 channels ({conv}); mmedge's patch-embedding kernel cannot compute it.")
    return towers[0]


def patch_weights(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The kernel's weights, float32: "weight" [D, 3, P, P], "position_embedding" [tokens, D], and
    "bias" [D] (SigLIP) or "class_embedding" [D] (CLIP) where the tower has them."""
    embeddings = vision_tower(model).embeddings
    conv = embeddings.patch_embedding
    out = {"weight": conv.weight, "position_embedding": embeddings.position_embedding.weight}
    if conv.bias is not None:
        out["bias"] = conv.bias
    if getattr(embeddings, "class_embedding", None) is not None:
        out["class_embedding"] = embeddings.class_embedding
    return {name: np.ascontiguousarray(t.detach().float().cpu().numpy()) for name, t in out.items()}


def save_patch_weights(model: torch.nn.Module, out_dir: Path, image_size: tuple[int, int]) -> dict[str, Any]:
    """Write PATCH_FILE into `out_dir`; returns the manifest's image["patch_embedding"] entry."""
    from safetensors.numpy import save_file

    weights = patch_weights(model)
    dim, _, patch, _ = weights["weight"].shape
    tokens = (image_size[0] // patch) * (image_size[1] // patch) + ("class_embedding" in weights)
    if weights["position_embedding"].shape != (tokens, dim):
        raise UnsupportedModelError(
            f"the tower has {weights['position_embedding'].shape[0]} position embeddings for "
            f"{tokens} tokens at {image_size[0]}x{image_size[1]}; interpolated position embeddings "
            "are not supported.")
    save_file(weights, str(out_dir / PATCH_FILE))
    return {"file": PATCH_FILE, "num_tokens": tokens, "dim": int(dim), "patch_size": int(patch),
            "tensors": sorted(weights)}


@contextmanager
def tokens_input(model: torch.nn.Module) -> Iterator[None]:
    """While active, `model`'s vision tower takes patch tokens [batch, tokens, D] where it took
    pixels (make its sample with `sample_tokens` before entering)."""
    tower = vision_tower(model)
    original = tower.embeddings
    tower.embeddings = _TokensPassThrough()
    try:
        yield
    finally:
        tower.embeddings = original


def torch_patch_tokens(model: torch.nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """transformers' own embeddings of `pixel_values`: what the graph input must be."""
    with torch.no_grad():
        return vision_tower(model).embeddings(pixel_values)


def sample_tokens(model: torch.nn.Module, batch: int) -> torch.Tensor:
    """Random patch tokens [batch, tokens, D] in the tower's dtype, to trace a graph with."""
    embeddings = vision_tower(model).embeddings
    tokens, dim = embeddings.position_embedding.weight.shape
    param = embeddings.patch_embedding.weight
    if batch < 2:
        raise ExportError("trace with a batch of at least 2, or dynamo specializes the batch dim")
    return torch.randn(batch, tokens, dim, dtype=param.dtype, device=param.device)
