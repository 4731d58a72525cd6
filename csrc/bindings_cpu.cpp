// noisefast._C: the CPU kernels (always built).
#include "bindings.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

#ifndef NOISEFAST_CUDA_MODE
#define NOISEFAST_CUDA_MODE "unknown"
#endif
#ifndef NOISEFAST_CUDA_COMPILER
#define NOISEFAST_CUDA_COMPILER ""
#endif

PYBIND11_MODULE(_C, m) {
  using namespace noisefast;
  m.doc() = "noisefast CPU kernels (C++17, OpenMP, SIMD)";
  bind_kernels(m, NOISEFAST_KERNEL_TABLE(cpu));
  m.def("build_info", [] {
    py::dict d;
#if defined(_OPENMP)
    d["openmp"] = int(_OPENMP);
    d["max_threads"] = omp_get_max_threads();
#else
    d["openmp"] = 0;
    d["max_threads"] = 1;
#endif
    d["compiler"] = __VERSION__;
    d["cuda_mode"] = NOISEFAST_CUDA_MODE;              // NOISEFAST_CUDA at configure time: AUTO, ON or OFF
    d["cuda_compiler"] = NOISEFAST_CUDA_COMPILER;      // the nvcc CMake found ("" = none, _C_cuda not built)
    return d;
  }, "How this module was built.");
}
