"""The optional native extension `mmedge._C`: whether it is present and what it was built with.

`mmedge.kernels` reaches the kernels through the `_C` loaded here. mmedge runs without `_C` (the
image path then embeds patches with numpy, see mmedge.vision.inputs), so a missing extension is a fact
to report, not an error. Nothing here imports torch or `mmedge.export`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

__all__ = ["native_info"]


def _load() -> tuple[ModuleType | None, str]:
    """Import `mmedge._C`; return it, or None and the reason it is unavailable."""
    try:
        _C = importlib.import_module("mmedge._C")
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "mmedge._C":
            return None, (
                "the native extension mmedge._C is not built (running from a source tree?). "
                "Build it with `pip install .` from the repository root (MMEDGE_CUDA=AUTO|ON|OFF "
                "picks CUDA); mmedge works without it on its numpy and ONNX Runtime paths."
            )
        return None, (
            f"the native extension mmedge._C is present but failed to load ({exc}). "
            "Rebuild it with `pip install .` from the repository root."
        )
    return _C, ""


_C, _UNAVAILABLE_REASON = _load()


def native_info() -> dict[str, Any]:
    """Describe the native extension.

    With `_C`: {"available": True, "version", "built_with_cuda", "cuda_available", "device_count"}.
    Without it: {"available": False, "reason": <what is wrong and how to build it>}.
    """
    if _C is None:
        return {"available": False, "reason": _UNAVAILABLE_REASON}
    return {
        "available": True,
        "version": _C.__version__,
        "built_with_cuda": _C.built_with_cuda,
        "cuda_available": _C.cuda_available(),
        "device_count": _C.cuda_device_count(),
    }
