"""Type stub for the native extension `mmedge._C` (built from csrc/ by CMakeLists.txt).

Private: use `mmedge.native`.
"""

__version__: str
built_with_cuda: bool

def cuda_available() -> bool:
    """True when this build has CUDA and the driver reports at least one device."""

def cuda_device_count() -> int:
    """Number of usable CUDA devices; 0 without a CUDA build, the NVIDIA driver, or a GPU."""
