// CPU guided DDIM move: one pass over [B, N], OpenMP over (row, chunk) tasks, SIMD inner loops.
#include <type_traits>

#include "cpu_common.h"
#include "ddim_move/ddim_move.h"

namespace noisefast {
namespace {

constexpr int64_t kChunk = 8192;  // elements per OpenMP task

template <typename T>
using Coefs = DdimCoefs<typename AccType<T>::type>;

// One compiled variant of the loops: storage type and the three flags as compile-time constants,
// so that every loop is branch-free and vectorises.
template <typename T_, bool kUncond_, bool kClip_, bool kV_>
struct Variant {
  using T = T_;
  static constexpr bool kUncond = kUncond_, kClip = kClip_, kV = kV_;
};

// x'[i] for i in [lo, hi) of one row.
template <typename T, bool kUncond, bool kClip, bool kV>
NF_CPU_HOT void move_range(const Coefs<T>& c, T* out, const T* x, const T* m_c, const T* m_u, int64_t lo,
                              int64_t hi) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    const auto m = c.guided(to_acc(m_c[i]), kUncond ? to_acc(m_u[i]) : 0, kUncond);
    out[i] = from_acc<T>(c.move(to_acc(x[i]), m, kV, kClip));
  }
}

template <typename T, bool kUncond, bool kClip, bool kV>
NF_CPU_HOT void backward_range(const Coefs<T>& c, T* dx, T* dm_c, T* dm_u, const T* g, const T* x, const T* m_c,
                                  const T* m_u, int64_t lo, int64_t hi) {
  using acc_t = typename AccType<T>::type;
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    // Without clipping x and m are not read (the move is affine).
    const acc_t xi = kClip ? to_acc(x[i]) : acc_t(0);
    const acc_t m = kClip ? c.guided(to_acc(m_c[i]), kUncond ? to_acc(m_u[i]) : 0, kUncond) : acc_t(0);
    acc_t gx, gm;
    c.move_backward(to_acc(g[i]), xi, m, kV, kClip, gx, gm);
    dx[i] = from_acc<T>(gx);
    if (kUncond) {  // m = m_u + w·(m_c − m_u):  ∂m/∂m_c = w,  ∂m/∂m_u = 1 − w
      dm_c[i] = from_acc<T>(c.w * gm);
      dm_u[i] = from_acc<T>((acc_t(1) - c.w) * gm);
    } else {
      dm_c[i] = from_acc<T>(gm);
    }
  }
}

template <bool kValue>
using Flag = std::integral_constant<bool, kValue>;

// Calls fn(Flag<uncond>, Flag<clip>, Flag<v_prediction>): runtime flags become template parameters.
template <typename F>
void dispatch_flags(bool uncond, bool clip, bool v, F&& fn) {
  auto with_v = [&](auto u, auto c) { v ? fn(u, c, Flag<true>{}) : fn(u, c, Flag<false>{}); };
  auto with_clip = [&](auto u) { clip ? with_v(u, Flag<true>{}) : with_v(u, Flag<false>{}); };
  uncond ? with_clip(Flag<true>{}) : with_clip(Flag<false>{});
}

// The forward and the backward share the walk: for every (row, chunk) it calls
// fn(Variant<T, uncond, clip, v>{}, the row's coefficients, the row, lo, hi).
template <typename Args, typename F>
void for_each_move_chunk(const Args& p, bool uncond, const Launch& launch, F&& fn) {
  check_sizes(p.B, p.N);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename AccType<T>::type;
    const acc_t* a = static_cast<const acc_t*>(p.alpha_from);
    const acc_t* a_to = static_cast<const acc_t*>(p.alpha_to);
    const acc_t* w = static_cast<const acc_t*>(p.guidance);
    dispatch_flags(uncond, p.clip, p.v_prediction, [&](auto u, auto cl, auto v) {
      using Var = Variant<T, decltype(u)::value, decltype(cl)::value, decltype(v)::value>;
      for_each_chunk(RowChunks(p.B, p.N, kChunk), launch, [&](int64_t b, int64_t lo, int64_t hi) NF_CPU_HOT_LAMBDA {
        fn(Var{}, Coefs<T>::make(a[b], a_to[b], w[b], Var::kV, p.flow, p.clip_range), Row<T>{b * p.N}, lo, hi);
      });
    });
  });
}

}  // namespace

void ddim_move_cpu(const DdimMoveArgs& p, const Launch& launch) {
  for_each_move_chunk(p, p.m_u != nullptr, launch, [&](auto var, const auto& c, auto r, int64_t lo, int64_t hi) NF_CPU_HOT_LAMBDA {
    using V = decltype(var);
    move_range<typename V::T, V::kUncond, V::kClip, V::kV>(c, r.out(p.out), r.in(p.x), r.in(p.m_c), r.in(p.m_u),
                                                           lo, hi);
  });
}

void ddim_move_backward_cpu(const DdimMoveBackwardArgs& p, const Launch& launch) {
  for_each_move_chunk(p, p.dm_u != nullptr, launch, [&](auto var, const auto& c, auto r, int64_t lo, int64_t hi) NF_CPU_HOT_LAMBDA {
    using V = decltype(var);
    backward_range<typename V::T, V::kUncond, V::kClip, V::kV>(c, r.out(p.dx), r.out(p.dm_c), r.out(p.dm_u),
                                                               r.in(p.grad), r.in(p.x), r.in(p.m_c), r.in(p.m_u),
                                                               lo, hi);
  });
}

}  // namespace noisefast
