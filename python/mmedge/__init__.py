"""mmedge: run small vision-language models exported to ONNX bundles, locally, without torch.

    import mmedge
    model = mmedge.load("bundle/", device="auto")
    print(model.generate("What is in front of me?", images=["photo.jpg"]))
    for chunk in model.generate("Tell me more.", stream=True): print(chunk, end="")

The runtime needs numpy, onnxruntime, tokenizers, Pillow and jinja2. `mmedge export` (the
`mmedge.export` package, torch + transformers) is only imported by the CLI's export command.
"""

__version__ = "0.1.0"

from .errors import (BundleError, DeviceError, ExportError, ImageError, MMEdgeError,  # noqa: E402
                     PromptError, UnsupportedModelError)


def load(bundle, device: str = "auto", threads=None, verify: bool = True):
    """Open a bundle written by `mmedge export`; see `mmedge.model.load`."""
    from .model import load as _load

    return _load(bundle, device=device, threads=threads, verify=verify)


__all__ = ["load", "__version__", "MMEdgeError", "BundleError", "DeviceError", "ExportError",
           "ImageError", "PromptError", "UnsupportedModelError"]
