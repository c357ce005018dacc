// Build and run-time facts about the native library (see runtime_info.h).
#include "runtime_info.h"

#include "cuda/device_info.h"
#include "version.h"

namespace mmedge {

const char* version() noexcept { return kVersion; }

bool built_with_cuda() noexcept {
#ifdef MMEDGE_WITH_CUDA
  return true;
#else
  return false;
#endif
}

bool cuda_available() noexcept { return mmedge_cuda_device_count() > 0; }

}  // namespace mmedge
