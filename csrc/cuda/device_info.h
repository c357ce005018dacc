// CUDA device discovery. Errors are values at this boundary: a CPU-only build, a machine without
// the NVIDIA driver and a machine without a GPU all report zero devices; nothing throws or aborts.
#pragma once

#ifdef MMEDGE_WITH_CUDA

// Number of CUDA devices this process can use (device_info.cu); 0 when the runtime reports an error.
extern "C" int mmedge_cuda_device_count() noexcept;

#else

// CPU-only build: the same function, with nothing to find.
extern "C" inline int mmedge_cuda_device_count() noexcept { return 0; }

#endif
