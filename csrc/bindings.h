// The Python surface shared by noisefast._C (CPU) and noisefast._C_cuda: every kernel takes raw
// addresses (tensor.data_ptr()), sizes and a dtype code, never a torch type, so one build serves
// any torch version. Tensors are contiguous [B, N]; coefficient arrays are [B] in the accumulation
// dtype (float32, float64 for float64 storage). `nthreads` is read by CPU kernels, `stream` by
// CUDA kernels. Optional tensors are passed as address 0.
#pragma once

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>

#include "cosine/cosine.h"
#include "ddim_move/ddim_move.h"
#include "momentum/momentum.h"

namespace noisefast {

namespace py = pybind11;

struct KernelTable {
  void (*ddim_move)(const DdimMoveArgs&, const Launch&);
  void (*ddim_move_backward)(const DdimMoveBackwardArgs&, const Launch&);
  size_t (*cosine_workspace_bytes)(int64_t, int64_t);
  void (*cosine)(const CosineArgs&, const Launch&);
  void (*cosine_backward)(const CosineBackwardArgs&, const Launch&);
  size_t (*momentum_workspace_bytes)(int64_t, int64_t);
  void (*momentum_step)(const MomentumArgs&, const Launch&);
};

// The table of one backend's entry points: NOISEFAST_KERNEL_TABLE(cpu) → ddim_move_cpu, …
#define NOISEFAST_KERNEL_TABLE(backend)                                                              \
  ::noisefast::KernelTable {                                                                         \
    ::noisefast::ddim_move_##backend, ::noisefast::ddim_move_backward_##backend,                     \
        ::noisefast::cosine_workspace_bytes_##backend, ::noisefast::cosine_##backend,                \
        ::noisefast::cosine_backward_##backend, ::noisefast::momentum_workspace_bytes_##backend,     \
        ::noisefast::momentum_step_##backend                                                         \
  }

inline void* addr(uintptr_t p) { return reinterpret_cast<void*>(p); }

// The flow-matching Euler move is affine in (x, m) only: it has no x̂₀ to clip and no v/epsilon formulas.
inline void check_flow(bool flow, bool v_prediction, const std::optional<double>& clip_range) {
  if (flow && (v_prediction || clip_range.has_value()))
    throw py::value_error("noisefast: the flow move takes neither v_prediction nor clip_range");
}

inline void bind_kernels(py::module_& m, const KernelTable k) {
  using py::arg;
  const auto no_gil = py::call_guard<py::gil_scoped_release>();
  const auto launch = [](int64_t nthreads, uintptr_t stream) { return Launch{nthreads, stream}; };

  m.def("ddim_move",
        [k, launch](uintptr_t out, uintptr_t x, uintptr_t m_c, uintptr_t m_u, uintptr_t alpha_from, uintptr_t alpha_to,
                    uintptr_t guidance, int64_t B, int64_t N, int dtype, bool v_prediction, bool flow,
                    std::optional<double> clip_range, int64_t nthreads, uintptr_t stream) {
          check_flow(flow, v_prediction, clip_range);
          k.ddim_move({addr(out), addr(x), addr(m_c), addr(m_u), addr(alpha_from), addr(alpha_to), addr(guidance), B, N,
                       to_dtype(dtype), v_prediction, flow, clip_range.has_value(), clip_range.value_or(0.0)},
                      launch(nthreads, stream));
        },
        "out[B,N] = guided DDIM move (or, with flow, the Euler move x + (σ'−σ)·m) of x[B,N] with model outputs "
        "m_c[B,N] (and m_u[B,N] or 0).",
        arg("out"), arg("x"), arg("m_c"), arg("m_u"), arg("alpha_from"), arg("alpha_to"), arg("guidance"), arg("B"),
        arg("N"), arg("dtype"), arg("v_prediction"), arg("flow"), arg("clip_range"), arg("nthreads") = 0,
        arg("stream") = 0, no_gil);

  m.def("ddim_move_backward",
        [k, launch](uintptr_t dx, uintptr_t dm_c, uintptr_t dm_u, uintptr_t grad, uintptr_t x, uintptr_t m_c,
                    uintptr_t m_u, uintptr_t alpha_from, uintptr_t alpha_to, uintptr_t guidance, int64_t B, int64_t N,
                    int dtype, bool v_prediction, bool flow, std::optional<double> clip_range, int64_t nthreads,
                    uintptr_t stream) {
          check_flow(flow, v_prediction, clip_range);
          k.ddim_move_backward({addr(dx), addr(dm_c), addr(dm_u), addr(grad), addr(x), addr(m_c), addr(m_u),
                                addr(alpha_from), addr(alpha_to), addr(guidance), B, N, to_dtype(dtype), v_prediction,
                                flow, clip_range.has_value(), clip_range.value_or(0.0)},
                               launch(nthreads, stream));
        },
        "Gradients of ddim_move: dx, dm_c (and dm_u or 0) from grad[B,N]; x/m_c/m_u are read only with clipping.",
        arg("dx"), arg("dm_c"), arg("dm_u"), arg("grad"), arg("x"), arg("m_c"), arg("m_u"), arg("alpha_from"),
        arg("alpha_to"), arg("guidance"), arg("B"), arg("N"), arg("dtype"), arg("v_prediction"), arg("flow"),
        arg("clip_range"), arg("nthreads") = 0, arg("stream") = 0, no_gil);

  m.def("cosine_workspace_bytes", k.cosine_workspace_bytes, "Scratch bytes cosine() needs for [B, N] inputs.",
        arg("B"), arg("N"));

  m.def("cosine",
        [k, launch](uintptr_t cos, uintptr_t stats, uintptr_t a, uintptr_t b, uintptr_t workspace, int64_t B, int64_t N,
                    int dtype, int64_t nthreads, uintptr_t stream) {
          k.cosine({addr(cos), addr(stats), addr(a), addr(b), addr(workspace), B, N, to_dtype(dtype)},
                   launch(nthreads, stream));
        },
        "cos[B] and stats[B,3] = (<a,b>, |a|^2, |b|^2) of a[B,N], b[B,N].", arg("cos"), arg("stats"), arg("a"),
        arg("b"), arg("workspace"), arg("B"), arg("N"), arg("dtype"), arg("nthreads") = 0, arg("stream") = 0, no_gil);

  m.def("cosine_backward",
        [k, launch](uintptr_t da, uintptr_t db, uintptr_t grad, uintptr_t a, uintptr_t b, uintptr_t stats, int64_t B,
                    int64_t N, int dtype, int64_t nthreads, uintptr_t stream) {
          k.cosine_backward({addr(da), addr(db), addr(grad), addr(a), addr(b), addr(stats), B, N, to_dtype(dtype)},
                            launch(nthreads, stream));
        },
        "da[B,N], db[B,N] from grad[B] (dL/dcos), a, b and the forward's stats.", arg("da"), arg("db"), arg("grad"),
        arg("a"), arg("b"), arg("stats"), arg("B"), arg("N"), arg("dtype"), arg("nthreads") = 0, arg("stream") = 0,
        no_gil);

  m.def("momentum_workspace_bytes", k.momentum_workspace_bytes,
        "Scratch bytes momentum_step() needs for [B, N] inputs with renorm.", arg("B"), arg("N"));

  m.def("momentum_step",
        [k, launch](uintptr_t x, uintptr_t grad, uintptr_t velocity, uintptr_t lr, uintptr_t renorm,
                    uintptr_t workspace, double momentum, bool nesterov, int64_t B, int64_t N, int dtype,
                    int64_t nthreads, uintptr_t stream) {
          k.momentum_step({addr(x), addr(grad), addr(velocity), addr(lr), addr(renorm), addr(workspace), momentum,
                           nesterov, B, N, to_dtype(dtype)},
                          launch(nthreads, stream));
        },
        "In place: v = mu*v + g; x -= lr*(v or g + mu*v); optionally x *= renorm/|x| per sample.", arg("x"),
        arg("grad"), arg("velocity"), arg("lr"), arg("renorm"), arg("workspace"), arg("momentum"), arg("nesterov"),
        arg("B"), arg("N"), arg("dtype"), arg("nthreads") = 0, arg("stream") = 0, no_gil);
}

}  // namespace noisefast
