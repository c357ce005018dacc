"""The exceptions mmedge raises for bad input, bad bundles and unsupported models.

Every user-facing failure is an `MMEdgeError`: the CLI prints its message (no traceback) and exits
with status 2. Messages say what is wrong and what to do next. Programming errors stay ordinary
Python exceptions.
"""

from __future__ import annotations


class MMEdgeError(Exception):
    """Base class of every error mmedge reports to a user."""


class BundleError(MMEdgeError):
    """A bundle is missing, incomplete, tampered with, or from an unknown format version."""


class ImageError(MMEdgeError):
    """An image could not be read, is corrupt, or is too large to decode safely."""


class PromptError(MMEdgeError):
    """A prompt is empty, malformed, or does not fit in the model's context."""


class UnsupportedModelError(MMEdgeError):
    """The exporter has no recipe for this model architecture."""


class ExportError(MMEdgeError):
    """Export failed, including a parity check that found the ONNX graphs disagree with torch."""


class BusyError(MMEdgeError):
    """Every generation slot of a model is in use (see `parallel` in `mmedge.load`)."""


class DeviceError(MMEdgeError):
    """A requested device or backend is not available."""
