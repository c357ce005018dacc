// The pybind11 module `mmedge._C`, and the only file that includes pybind11. Bindings stay thin:
// check arguments at the boundary, release the GIL, call into mmedge_core. Python code reaches this
// module through mmedge.native; its stub is python/mmedge/_C.pyi.
#include <pybind11/pybind11.h>

#include "cuda/device_info.h"
#include "runtime_info.h"

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.doc() = "mmedge native library (private: use mmedge.native).";

  m.attr("__version__") = mmedge::version();
  m.attr("built_with_cuda") = mmedge::built_with_cuda();

  // The first CUDA call loads the driver and can take a while: let other threads run meanwhile.
  m.def("cuda_available", &mmedge::cuda_available, py::call_guard<py::gil_scoped_release>(),
        "True when this build has CUDA and the driver reports at least one device.");
  m.def("cuda_device_count", &mmedge_cuda_device_count, py::call_guard<py::gil_scoped_release>(),
        "Number of usable CUDA devices; 0 without a CUDA build, the NVIDIA driver, or a GPU.");
}
