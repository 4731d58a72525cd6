// noisefast._C: the CPU kernels (always built).
#include "bindings.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

#include <cctype>
#include <cstdlib>

#include "cpu_isa.h"

#ifndef NOISEFAST_CUDA_MODE
#define NOISEFAST_CUDA_MODE "unknown"
#endif
#ifndef NOISEFAST_CUDA_COMPILER
#define NOISEFAST_CUDA_COMPILER ""
#endif

namespace {

using namespace noisefast;

std::string join(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out;
}

// NOISEFAST_CPU_ISA caps the level at load time. Unset or empty: the best level the CPU supports.
// An unknown value, or a level the CPU (or this build) lacks, warns (RuntimeWarning) and uses the
// best available one; it never fails the import and never runs an instruction the CPU lacks.
void init_cpu_isa_from_env() {
  const char* env = std::getenv("NOISEFAST_CPU_ISA");
  const int best = cpu_isa_supported_max();
  cpu_isa_set(best);
  if (env == nullptr || *env == '\0') return;
  std::string name(env);
  for (auto& ch : name) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  const int wanted = cpu_isa_from_name(name);
  std::string warning;
  if (wanted < 0) {
    warning = "NOISEFAST_CPU_ISA='" + std::string(env) + "' is not one of baseline, avx2, avx512; using " +
              kIsaNames[best] + " (the best this CPU supports)";
  } else if (wanted > best) {
    warning = "NOISEFAST_CPU_ISA=" + name + " but this CPU/build supports only " + join(cpu_isa_names_upto(best)) +
              "; using " + kIsaNames[best];
  } else {
    cpu_isa_set(wanted);
  }
  if (!warning.empty() && PyErr_WarnEx(PyExc_RuntimeWarning, ("noisefast: " + warning).c_str(), 1) != 0)
    throw py::error_already_set();  // warnings turned into errors (-W error): the import fails with it
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  using namespace noisefast;
  m.doc() = "noisefast CPU kernels (C++17, OpenMP, SIMD)";
  bind_kernels(m, NOISEFAST_KERNEL_TABLE(cpu));
  init_cpu_isa_from_env();
  m.def("cpu_isa", [] { return std::string(kIsaNames[cpu_isa_current()]); },
        "The instruction-set level the CPU kernels run with now: baseline, avx2 or avx512.");
  m.def("cpu_isa_available", [] { return cpu_isa_names_upto(cpu_isa_supported_max()); },
        "The levels this CPU can run (and this build has), lowest first.");
  m.def("cpu_isa_compiled", [] { return cpu_isa_names_upto(cpu_isa_compiled_max()); },
        "The levels compiled into this build, lowest first.");
  m.def("set_cpu_isa",
        [](const std::string& name) {
          const int level = cpu_isa_from_name(name), best = cpu_isa_supported_max();
          if (level < 0)
            throw py::value_error("noisefast: unknown CPU ISA level '" + name + "'; expected baseline, avx2 or avx512");
          if (level > best)
            throw py::value_error("noisefast: this CPU/build cannot run '" + name + "'; available: " +
                                  join(cpu_isa_names_upto(best)));
          return std::string(kIsaNames[cpu_isa_set(level)]);
        },
        "Switches the CPU kernels to `name` (baseline, avx2, avx512) for the whole process; returns the previous "
        "level. Raises ValueError for an unknown name or a level this CPU lacks.",
        py::arg("name"));
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
    d["cpu_isa"] = std::string(kIsaNames[cpu_isa_current()]);
    d["cpu_isa_available"] = cpu_isa_names_upto(cpu_isa_supported_max());
    d["cpu_isa_compiled"] = cpu_isa_names_upto(cpu_isa_compiled_max());
    d["cuda_mode"] = NOISEFAST_CUDA_MODE;              // NOISEFAST_CUDA at configure time: AUTO, ON or OFF
    d["cuda_compiler"] = NOISEFAST_CUDA_COMPILER;      // the nvcc CMake found ("" = none, _C_cuda not built)
    return d;
  }, "How this module was built.");
}
