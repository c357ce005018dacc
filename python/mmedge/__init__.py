"""mmedge: run small vision-language models exported to ONNX bundles, locally, without torch.

    import mmedge
    model = mmedge.load("bundle/", device="auto")
    print(model.generate("What is in front of me?", images=["photo.jpg"]))
    for chunk in model.generate("Tell me more.", stream=True): print(chunk, end="")

The runtime, by job:

    bundle.py, backend.py, errors.py   opening a bundle (checksums, paths), choosing the device and
                                       opening ONNX Runtime sessions, the exceptions mmedge raises
    native.py, kernels.py              the C++/CUDA extension `mmedge._C` and its Python wrappers
                                       (patch embedding, attention), used by vision/ and generation/
    vision/      images in (files, bytes, PIL, camera frames), HF-exact preprocessing, the
                 vision graph's input
    text/        tokenizer, chat template, streaming detokenizer, stop strings
    generation/  the VLM/LLM `Model`, the decoder session and KV caches, the generation loop,
                 sampling
    clip/        CLIP/SigLIP `ClipModel`, the on-disk image index, contact sheets
    evaluation/  generated scenes (`mmedge.scenes`), quality (`mmedge eval`), speed (`mmedge bench`)
    cli/         the `mmedge` command, one module per command group

It needs numpy, onnxruntime, tokenizers, Pillow and jinja2. `mmedge.export` (torch +
transformers) and `mmedge.models` (the reference models trained here) are separate packages that
the runtime never imports; only the CLI's export command does.
"""

__version__ = "0.1.0"

from mmedge.errors import (BundleError, BusyError, DeviceError, ExportError, ImageError, MMEdgeError,  # noqa: E402
                           PromptError, UnsupportedModelError)


def load(bundle, device: str = "auto", threads=None, verify: bool = True, *, parallel: int = 1,
         queue_timeout: float | None = None, image_cache: int = 16, strict_device: bool = False,
         image_longest_edge: int | None = None, max_pixels: int | None = None):
    """Open a bundle written by `mmedge export`.

    `device` is "auto" (CUDA when onnxruntime-gpu and a GPU are present, else CPU), "cpu" or
    "cuda"; `model.device.note` says which one runs (`strict_device=True`: a "cuda" that cannot
    be had raises DeviceError instead of falling back to the CPU). `verify` checks every file's sha256 first.
    For generation: `parallel` generations may be in progress at once, each with a KV cache of its
    own (a further one waits up to `queue_timeout` seconds, None = as long as it takes, and is
    refused with `BusyError` where waiting could never end); `image_cache` images' features are
    kept for reuse. `image_longest_edge` (tiling models such as SmolVLM): the longest edge images
    are resized to before tiling, instead of the checkpoint's (fewer tiles, fewer image tokens;
    transformers' `size={"longest_edge": N}`). `max_pixels` (Qwen-VL): the pixel budget images are
    resized within, instead of the checkpoint's (about max_pixels / 784 image tokens at most;
    / 1024 for Qwen3-VL; transformers' `size={"longest_edge": N}` of Qwen2VLImageProcessor).
    Gives a `mmedge.generation.Model` for a (vision-)language model and a `mmedge.clip.ClipModel`
    for a CLIP/SigLIP bundle (family "clip").
    """
    from mmedge.bundle import open_bundle

    opened = open_bundle(bundle, verify=verify)
    if opened.family == "clip":
        from mmedge.clip import ClipModel

        return ClipModel(opened, device=device, threads=threads, strict_device=strict_device)
    from mmedge.generation import Model

    return Model(opened, device=device, threads=threads, parallel=parallel,
                 queue_timeout=queue_timeout, image_cache=image_cache, strict_device=strict_device,
                 image_longest_edge=image_longest_edge, max_pixels=max_pixels)


__all__ = ["load", "__version__", "MMEdgeError", "BundleError", "BusyError", "DeviceError", "ExportError",
           "ImageError", "PromptError", "UnsupportedModelError"]
