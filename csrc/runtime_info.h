// What this build of the native library is and what it finds at run time: its version, whether
// CUDA code was compiled in, whether a CUDA device is usable. No kernels live here.
#pragma once

namespace mmedge {

// The package version, e.g. "0.1.0"; equal to mmedge.__version__ in a consistent install.
const char* version() noexcept;

// True when the CUDA code was compiled in (MMEDGE_WITH_CUDA), whether or not a GPU is present.
bool built_with_cuda() noexcept;

// True when built with CUDA and the driver reports at least one device.
bool cuda_available() noexcept;

}  // namespace mmedge
