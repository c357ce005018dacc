// Counts the CUDA devices this process can use. Compiled only when CMake finds nvcc
// (MMEDGE_CUDA=AUTO or ON); a CPU-only build uses the stub in device_info.h.
#include "cuda/device_info.h"

#include <cuda_runtime.h>

extern "C" int mmedge_cuda_device_count() noexcept {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    // No driver (cudaErrorInsufficientDriver), no GPU (cudaErrorNoDevice), and the like: report
    // none, and clear the error so that the next CUDA call does not inherit it.
    cudaGetLastError();
    return 0;
  }
  return count;
}
