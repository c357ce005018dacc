"""Images in, the vision graph's input out:

- image.py       load_image: a file, bytes, a PIL image or an HxWxC camera frame -> one RGB image,
                 within a pixel limit, or an `ImageError` saying what is wrong;
- preprocess.py  `ImagePreprocessor`: `pixel_values` exactly as transformers' image processors
                 make them (the reference the kernels are tested against);
- inputs.py      `VisionInput`: images -> patch tokens with the native patch-embedding kernel
                 (`mmedge.kernels`), in numpy where the extension is missing.
"""

from mmedge.vision.image import load_image

__all__ = ["load_image"]
