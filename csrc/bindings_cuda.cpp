// noisefast._C_cuda: the CUDA kernels (built when CMake finds a CUDA compiler). The CUDA runtime
// is linked statically, so the module imports on machines without a driver; build_info() says
// whether a driver and devices are present.
#include <cuda_runtime_api.h>

#include "bindings.h"

#ifndef NOISEFAST_CUDA_ARCHS
#define NOISEFAST_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C_cuda, m) {
  using namespace noisefast;
  m.doc() = "noisefast CUDA kernels";
  bind_kernels(m, NOISEFAST_KERNEL_TABLE(cuda));
  m.def("build_info", [] {
    py::dict d;
    int runtime = 0, driver = 0, devices = 0;
    cudaRuntimeGetVersion(&runtime);
    cudaDriverGetVersion(&driver);  // 0 when no driver is installed
    const cudaError_t err = cudaGetDeviceCount(&devices);
    d["cuda_archs"] = NOISEFAST_CUDA_ARCHS;            // CMAKE_CUDA_ARCHITECTURES of the build
    d["cuda_runtime_version"] = runtime;               // e.g. 13000 for 13.0 (linked statically)
    d["cuda_driver_version"] = driver;
    d["device_count"] = err == cudaSuccess ? devices : 0;
    d["device_error"] = err == cudaSuccess ? "" : cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error left by a failed query
    return d;
  }, "How this module was built and what the CUDA runtime sees now.");
}
