"""Low-rank adapters (LoRA, Hu et al. 2021) for the frozen LLM of mmedge-tiny-vlm.

Training wraps chosen `nn.Linear` layers as `W x + s * B (A x)` with A [r, in], B [out, r] (B starts at
zero, so training starts from the frozen model) and s = alpha / r. Only A and B are committed (a few
hundred kB); `merge` folds them into the base weights (W += s * B A), which is how the assembled
checkpoint carries them: a plain `LlavaForConditionalGeneration` with no adapter code, that every
exporter reads like any other.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
SCALE_KEY = "lora.scale"   # stored as a 0-d tensor beside the A/B pairs


class LoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))   # as the reference implementation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * ((x @ self.lora_A.T) @ self.lora_B.T)


def attach(module: nn.Module, rank: int, alpha: float, targets: tuple[str, ...] = ATTENTION) -> list[nn.Parameter]:
    """Wrap every linear layer named in `targets` under `module`; returns the new trainable parameters."""
    params = []
    for name, child in list(module.named_modules()):
        for attr in targets:
            layer = getattr(child, attr, None)
            if isinstance(layer, nn.Linear):
                wrapped = LoraLinear(layer, rank, alpha)
                setattr(child, attr, wrapped)
                params += [wrapped.lora_A, wrapped.lora_B]
    if not params:
        raise ValueError(f"no linear layer named {targets} under {type(module).__name__}")
    return params


def state(module: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters as a flat tensor dict (`<layer>.lora_A`, `<layer>.lora_B`, and the scale)."""
    out, scale = {}, None
    for name, child in module.named_modules():
        if isinstance(child, LoraLinear):
            out[f"{name}.lora_A"] = child.lora_A.detach().clone().contiguous()
            out[f"{name}.lora_B"] = child.lora_B.detach().clone().contiguous()
            scale = child.scale
    if scale is not None:
        out[SCALE_KEY] = torch.tensor(float(scale))
    return out


def unwrap(module: nn.Module) -> None:
    """Fold every attached adapter into its base layer and put the plain layer back."""
    for name, child in list(module.named_modules()):
        for attr, layer in list(child.named_children()):
            if isinstance(layer, LoraLinear):
                with torch.no_grad():
                    layer.base.weight += layer.scale * (layer.lora_B @ layer.lora_A)
                setattr(child, attr, layer.base)


@torch.no_grad()
def merge(module: nn.Module, adapters: dict[str, torch.Tensor]) -> int:
    """Fold saved adapters (from `state`, taken on the same module type) into `module`'s plain
    linear layers; returns how many layers changed. Refuses adapters that name a missing layer."""
    scale = float(adapters[SCALE_KEY])
    layers = dict(module.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in adapters if k != SCALE_KEY})
    for name in names:
        layer = layers.get(name)
        if not isinstance(layer, nn.Linear):
            raise ValueError(f"adapter for {name!r}, which is not a linear layer of {type(module).__name__}")
        layer.weight += scale * (adapters[f"{name}.lora_B"] @ adapters[f"{name}.lora_A"])
    return len(names)
