// Guided DDIM move (η = 0) between cumulative alphas a = ᾱ_from and a' = ᾱ_to, and its backward.
// Denoising (a < a') and inversion (a > a') are the same move. Reference: noisefast/ref.py::ddim_move.
// The flow-matching Euler move (prediction "flow") is the same affine kernel with the coefficient pair read
// as noise levels a = σ, a' = σ' (see below).
//
//   1. guidance:     m  = m_u + w·(m_c − m_u)                      (m = m_c without m_u)
//   2. prediction:   epsilon: x̂₀ = (x − √(1−a)·m)/√a,  ε̂ = m
//                    v:       x̂₀ = √a·x − √(1−a)·m,     ε̂ = √a·m + √(1−a)·x
//   3. clipping:     x̂₀ ← clamp(x̂₀, −r, r)   (optional; ε̂ is not recomputed, as diffusers'
//                                              default use_clipped_model_output=False)
//   4. move:         x' = √a'·x̂₀ + √(1−a')·ε̂
//
// Without clipping the move is affine, x' = c_x·x + c_m·m, and one multiply-add per input does it.
//
// Flow matching (rectified flow, diffusers FlowMatchEulerDiscreteScheduler): x_σ = (1 − σ)·x₀ + σ·ε, the model
// predicts the velocity v ≈ ε − x₀ and one Euler move from σ to σ' is x' = x + (σ' − σ)·v, i.e. c_x = 1,
// c_m = σ' − σ (computed from the two σ in double and rounded once: diffusers' float32 dt = σ' − σ exactly).
// No clipping in flow mode (the bindings refuse it).
//
// ᾱ = 0 (zero terminal SNR) is allowed: v prediction never divides (c_x = √(1−a'), c_m = −√a' at a = 0),
// nor does any move to a' = 0. Epsilon prediction from a = 0 divides by √a = 0: ops.py admits it only with
// clipping, where IEEE arithmetic gives x̂₀ = (x − m)·inf = ±inf → clamped to ±r, exactly diffusers' result
// ((x − m)/0 then clamp); c_x, c_m are then ±inf/NaN but unused. Needs IEEE inf semantics (no fast-math).
#pragma once

#include <cmath>

#include "common.h"

namespace noisefast {

struct DdimMoveArgs {
  void* out;               // [B, N]  x' (storage dtype)
  const void* x;           // [B, N]  latent at ᾱ_from
  const void* m_c;         // [B, N]  conditional model output
  const void* m_u;         // [B, N]  unconditional model output, or nullptr (no guidance)
  const void* alpha_from;  // [B]     a   (float; double for fp64 storage)
  const void* alpha_to;    // [B]     a'  (same)
  const void* guidance;    // [B]     w   (same; unread without m_u)
  int64_t B, N;
  DType dtype;
  bool v_prediction;
  bool flow;               // flow-matching Euler move: alpha_from/alpha_to hold σ/σ' (v_prediction, clip false)
  bool clip;               // clamp x̂₀ to [−clip_range, clip_range]
  double clip_range;
};

struct DdimMoveBackwardArgs {
  void* dx;                // [B, N]  ∂L/∂x
  void* dm_c;              // [B, N]  ∂L/∂m_c
  void* dm_u;              // [B, N]  ∂L/∂m_u, or nullptr (no guidance)
  const void* grad;        // [B, N]  ∂L/∂x'
  const void* x;           // [B, N]  needed only with clipping (the clamp mask), else nullptr
  const void* m_c;         // [B, N]  likewise
  const void* m_u;         // [B, N]  likewise (and only with guidance)
  const void* alpha_from;  // [B]
  const void* alpha_to;    // [B]
  const void* guidance;    // [B]
  int64_t B, N;
  DType dtype;
  bool v_prediction;
  bool flow;
  bool clip;
  double clip_range;
};

// Per-sample constants of one move, computed once per row in double and used in acc_t.
template <typename acc_t>
struct DdimCoefs {
  acc_t sa, s1a, inv_sa;   // √a, √(1−a), 1/√a
  acc_t sa_to, s1a_to;     // √a', √(1−a')
  acc_t cx, cm;            // affine form x' = c_x·x + c_m·m (no clipping)
  acc_t w, r;              // guidance scale, clip range

  NF_HD static DdimCoefs make(double a, double a_to, double w, bool v_prediction, bool flow, double r) {
    DdimCoefs c;
    if (flow) {          // x' = x + (σ' − σ)·v   (a = σ, a' = σ'); the DDIM fields stay unused
      c.sa = c.s1a = c.inv_sa = c.sa_to = c.s1a_to = acc_t(0);
      c.cx = acc_t(1);
      c.cm = acc_t(a_to - a);
      c.w = acc_t(w); c.r = acc_t(r);
      return c;
    }
    const double sa = sqrt(a), s1a = sqrt(1.0 - a), sat = sqrt(a_to), s1at = sqrt(1.0 - a_to);
    c.sa = acc_t(sa); c.s1a = acc_t(s1a); c.inv_sa = acc_t(1.0 / sa);
    c.sa_to = acc_t(sat); c.s1a_to = acc_t(s1at);
    if (v_prediction) {  // x' = √a'(√a x − √(1−a) m) + √(1−a')(√a m + √(1−a) x)
      c.cx = acc_t(sat * sa + s1at * s1a);
      c.cm = acc_t(s1at * sa - sat * s1a);
    } else {             // x' = √a'(x − √(1−a) m)/√a + √(1−a') m
      c.cx = acc_t(sat / sa);
      c.cm = acc_t(s1at - sat * s1a / sa);
    }
    c.w = acc_t(w); c.r = acc_t(r);
    return c;
  }

  // Step 1: the guided model output.
  NF_HD acc_t guided(acc_t m_c, acc_t m_u, bool has_uncond) const { return has_uncond ? m_u + w * (m_c - m_u) : m_c; }

  // Step 2 (x̂₀ before clipping).
  NF_HD acc_t x0_hat(acc_t x, acc_t m, bool v_prediction) const { return v_prediction ? sa * x - s1a * m : (x - s1a * m) * inv_sa; }

  // Steps 2-4 for one element.
  NF_HD acc_t move(acc_t x, acc_t m, bool v_prediction, bool clip) const {
    if (!clip) return cx * x + cm * m;
    acc_t x0 = x0_hat(x, m, v_prediction);
    x0 = x0 < -r ? -r : (x0 > r ? r : x0);
    const acc_t eps = v_prediction ? sa * m + s1a * x : m;
    return sa_to * x0 + s1a_to * eps;
  }

  // Backward of steps 2-4: from g = ∂L/∂x' to (∂L/∂x, ∂L/∂m). With clipping the clamp passes the
  // gradient where −r ≤ x̂₀ ≤ r (torch.clamp's convention), so x and m are needed for the mask.
  // Epsilon prediction from a = 0 (zero terminal SNR; only allowed with clipping): 1/√a = inf, x̂₀ = ±inf
  // (NaN where x = m) is clamped to ±r, never passes the mask, and its zero gradient must not meet the
  // infinite 1/√a (0·inf = NaN) — hence the selects below rather than multiplying by a masked dx̂₀.
  NF_HD void move_backward(acc_t g, acc_t x, acc_t m, bool v_prediction, bool clip, acc_t& dx, acc_t& dm) const {
    if (!clip) { dx = cx * g; dm = cm * g; return; }
    const acc_t x0 = x0_hat(x, m, v_prediction);
    const bool pass = x0 >= -r && x0 <= r;      // false for ±inf and NaN
    const acc_t deps = s1a_to * g;              // ∂L/∂ε̂
    if (v_prediction) {
      const acc_t dx0 = pass ? sa_to * g : acc_t(0);  // ∂L/∂x̂₀
      dx = sa * dx0 + s1a * deps;
      dm = sa * deps - s1a * dx0;
    } else {
      const acc_t dx0 = sa_to * g;                    // ∂L/∂x̂₀ where the clamp passes it
      dx = pass ? inv_sa * dx0 : acc_t(0);
      dm = pass ? deps - s1a * inv_sa * dx0 : deps;
    }
  }
};

void ddim_move_cpu(const DdimMoveArgs& p, const Launch& launch);
void ddim_move_backward_cpu(const DdimMoveBackwardArgs& p, const Launch& launch);
void ddim_move_cuda(const DdimMoveArgs& p, const Launch& launch);
void ddim_move_backward_cuda(const DdimMoveBackwardArgs& p, const Launch& launch);

}  // namespace noisefast
