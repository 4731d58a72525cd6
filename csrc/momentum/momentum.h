// In-place heavy-ball step with optional Nesterov look-ahead and per-sample renormalisation.
// Reference: noisefast/ref.py::momentum_step_.
//
//   1. v ← μ·v + g
//   2. x ← x − lr·v                 (Nesterov: x ← x − lr·(g + μ·v))
//   3. optional: x ← x · ρ / max(‖x‖, ε)   per sample (ρ = target norm, e.g. √N for a Gaussian)
//
// Step 3 needs the norm of the updated row, so pass 1 also sums x² per (row, chunk) and a second
// pass rescales; the partials of a row are added in chunk order (deterministic).
#pragma once

#include <cmath>

#include "common.h"

namespace noisefast {

constexpr double kRenormEps = 1e-12;  // noisefast.ref.COSINE_EPS, the norm floor of step 3

struct MomentumArgs {
  void* x;            // [B, N]  updated in place
  const void* grad;   // [B, N]
  void* velocity;     // [B, N]  updated in place
  const void* lr;     // [B]     accumulation dtype (float; double for fp64 storage)
  const void* renorm; // [B]     target norms ρ (same dtype), or nullptr: no step 3
  void* workspace;    // momentum_workspace_bytes_*(B, N) bytes when renorm is set (CPU: nullptr → its own)
  double momentum;    // μ
  bool nesterov;
  int64_t B, N;
  DType dtype;
};

// Steps 1-2 for one element; returns x_new and writes v_new.
template <typename acc_t>
NF_HD acc_t momentum_element(acc_t x, acc_t g, acc_t& v, acc_t lr, acc_t mu, bool nesterov) {
  v = mu * v + g;
  return x - lr * (nesterov ? g + mu * v : v);
}

// Step 3's scale from a row's sum of squares.
NF_HD double renorm_scale(double target, double sum_sq) {
  const double norm = sqrt(sum_sq);
  return target / (norm > kRenormEps ? norm : kRenormEps);
}

size_t momentum_workspace_bytes_cpu(int64_t B, int64_t N);
size_t momentum_workspace_bytes_cuda(int64_t B, int64_t N);
void momentum_step_cpu(const MomentumArgs& p, const Launch& launch);
void momentum_step_cuda(const MomentumArgs& p, const Launch& launch);

}  // namespace noisefast
