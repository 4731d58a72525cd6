// Per-sample cosine similarity over all non-batch dims, and its backward.
// Reference: noisefast/ref.py::cosine_similarity.
//
//   forward:   s_ab = ⟨a, b⟩,  s_aa = ‖a‖²,  s_bb = ‖b‖²        (one pass, wide accumulators)
//              d = max(√s_aa·√s_bb, ε)                          (ε = 1e-12: zero vectors give 0)
//              cos = s_ab / d
//   backward:  d > ε:  ∂cos/∂a = b/d − cos·a/s_aa,   ∂cos/∂b = a/d − cos·b/s_bb
//              d ≤ ε:  ∂cos/∂a = b/ε,                ∂cos/∂b = a/ε  (the clamped branch: finite)
//
// The sums are kept as `stats` so the backward needs no second reduction.
#pragma once

#include <cmath>

#include "common.h"

namespace noisefast {

constexpr double kCosineEps = 1e-12;  // noisefast.ref.COSINE_EPS

struct CosineArgs {
  void* cos;         // [B]     storage dtype
  void* stats;       // [B, 3]  accumulation dtype (float; double for fp64): s_ab, s_aa, s_bb
  const void* a;     // [B, N]
  const void* b;     // [B, N]
  void* workspace;   // cosine_workspace_bytes_*(B, N) bytes of scratch (per-chunk partial sums);
                     // the CPU kernel allocates its own when given nullptr
  int64_t B, N;
  DType dtype;
};

struct CosineBackwardArgs {
  void* da;          // [B, N]  ∂L/∂a
  void* db;          // [B, N]  ∂L/∂b
  const void* grad;  // [B]     ∂L/∂cos (storage dtype)
  const void* a;     // [B, N]
  const void* b;     // [B, N]
  const void* stats; // [B, 3]  from the forward
  int64_t B, N;
  DType dtype;
};

NF_HD double cosine_denominator(double s_aa, double s_bb) {
  const double d = sqrt(s_aa) * sqrt(s_bb);  // not √(s_aa·s_bb): no overflow of the product
  return d > kCosineEps ? d : kCosineEps;
}

// ∂L/∂a = ka_a·a + ka_b·b,  ∂L/∂b = kb_a·a + kb_b·b  for one sample, g = ∂L/∂cos.
template <typename acc_t>
struct CosineGradCoefs {
  acc_t ka_a, ka_b, kb_a, kb_b;

  NF_HD static CosineGradCoefs make(double g, double s_ab, double s_aa, double s_bb) {
    CosineGradCoefs k;
    const double d_raw = sqrt(s_aa) * sqrt(s_bb);
    if (d_raw >= kCosineEps) {  // torch.clamp_min passes the gradient where d ≥ ε
      const double cos = s_ab / d_raw;
      k.ka_a = acc_t(-g * cos / s_aa); k.ka_b = acc_t(g / d_raw);
      k.kb_a = acc_t(g / d_raw);       k.kb_b = acc_t(-g * cos / s_bb);
    } else {
      k.ka_a = acc_t(0);               k.ka_b = acc_t(g / kCosineEps);
      k.kb_a = acc_t(g / kCosineEps);  k.kb_b = acc_t(0);
    }
    return k;
  }
};

size_t cosine_workspace_bytes_cpu(int64_t B, int64_t N);
size_t cosine_workspace_bytes_cuda(int64_t B, int64_t N);
void cosine_cpu(const CosineArgs& p, const Launch& launch);
void cosine_backward_cpu(const CosineBackwardArgs& p, const Launch& launch);
void cosine_cuda(const CosineArgs& p, const Launch& launch);
void cosine_backward_cuda(const CosineBackwardArgs& p, const Launch& launch);

}  // namespace noisefast
