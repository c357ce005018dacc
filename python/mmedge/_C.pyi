"""Type stub for the native extension `mmedge._C` (built from csrc/ by CMakeLists.txt).

Private: use `mmedge.native` and `mmedge.kernels`. Array arguments are never copied: a wrong dtype
raises TypeError, a wrong shape or layout ValueError, each naming the argument.
"""

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__version__: str
built_with_cuda: bool

def cuda_available() -> bool:
    """True when this build has CUDA and the driver reports at least one device."""

def cuda_device_count() -> int:
    """Number of usable CUDA devices; 0 without a CUDA build, the NVIDIA driver, or a GPU."""

def cpu_simd_isa() -> str:
    """The instruction set the CPU kernels run with here: 'avx512', 'avx2' or 'generic'."""

def patch_embed(
    frame: npt.NDArray[np.uint8],
    resize_height: int,
    resize_width: int,
    image_height: int,
    image_width: int,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: Sequence[float],
    std: Sequence[float],
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None = None,
    class_embedding: npt.NDArray[np.float32] | None = None,
    position_embedding: npt.NDArray[np.float32] | None = None,
    out: npt.NDArray[np.float32] | None = None,
    num_threads: int = 0,
    pillow13_pass_order: bool = True,
) -> npt.NDArray[np.float32]:
    """Fused PIL-exact bicubic resize of `frame` (uint8 [H, W, 3], packed pixels, strided rows) to
    resize_height x resize_width, center crop to image_height x image_width, rescale/normalize,
    patch embedding by `weight` [D, 3, P, P] (+ bias [D]), class token [D] and position embedding
    [tokens, D]. Returns float32 [tokens, D] (`out` when given). Releases the GIL."""

def patch_embed_cuda_host(
    frame: npt.NDArray[np.uint8],
    resize_height: int,
    resize_width: int,
    image_height: int,
    image_width: int,
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    mean: Sequence[float],
    std: Sequence[float],
    weight: npt.NDArray[np.float32],
    bias: npt.NDArray[np.float32] | None = None,
    class_embedding: npt.NDArray[np.float32] | None = None,
    position_embedding: npt.NDArray[np.float32] | None = None,
    out: npt.NDArray[np.float32] | None = None,
    pillow13_pass_order: bool = True,
) -> npt.NDArray[np.float32]:
    """`patch_embed` on the GPU from host arrays (copies in and out, synchronizes); RuntimeError
    without a CUDA build or device. For tests and benchmarks."""

def attention_scratch_size(
    batch: int, num_heads: int, num_kv_heads: int, q_len: int, head_dim: int, num_threads: int = 0
) -> int:
    """Float32 elements of scratch `attention` needs for these shapes (any kv_len)."""

def attention(
    q: npt.NDArray[np.float32],
    k: npt.NDArray[np.float32],
    v: npt.NDArray[np.float32],
    out: npt.NDArray[np.float32],
    scratch: npt.NDArray[np.float32] | None = None,
    mask: npt.NDArray[np.float32] | None = None,
    kv_len: int = -1,
    scale: float | None = None,
    causal: bool = False,
    num_threads: int = 0,
) -> npt.NDArray[np.float32]:
    """softmax(q k^T * scale + mask) v into `out` on the CPU, float32; q/out [B, H, Tq, D], k/v
    [B, Hkv, capacity, D] (first kv_len rows read), any strides with a contiguous last axis; mask
    [Tq, >=kv_len] or [B|1, H|1, Tq, >=kv_len]. Returns `out`. Releases the GIL."""

def attention_cuda_host(
    q: npt.NDArray[np.float32 | np.float16 | np.uint16],
    k: npt.NDArray[np.float32 | np.float16 | np.uint16],
    v: npt.NDArray[np.float32 | np.float16 | np.uint16],
    out: npt.NDArray[np.float32 | np.float16 | np.uint16],
    mask: npt.NDArray[np.float32] | None = None,
    kv_len: int = -1,
    scale: float | None = None,
    causal: bool = False,
) -> npt.NDArray[np.float32 | np.float16 | np.uint16]:
    """`attention` on the GPU from host arrays: float32, float16, or bfloat16 bit patterns in
    uint16 (copies in and out, synchronizes); RuntimeError without a CUDA build or device."""
