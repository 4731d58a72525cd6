// CPU guided DDIM move: one pass over [B, N], OpenMP over (row, chunk) tasks, SIMD inner loops.
#include <type_traits>

#include "cpu_common.h"
#include "ddim_move/ddim_move.h"

namespace noisefast {
namespace {

constexpr int64_t kChunk = 8192;  // elements per OpenMP task

template <typename T>
using Coefs = DdimCoefs<typename AccType<T>::type>;

template <typename T>
Coefs<T> row_coefs(const void* alpha_from, const void* alpha_to, const void* guidance, int64_t b, bool v, double r) {
  using acc_t = typename AccType<T>::type;
  const acc_t* a = static_cast<const acc_t*>(alpha_from);
  const acc_t* a_to = static_cast<const acc_t*>(alpha_to);
  const acc_t* w = static_cast<const acc_t*>(guidance);
  return Coefs<T>::make(double(a[b]), double(a_to[b]), double(w[b]), v, r);
}

// x'[i] for i in [lo, hi) of one row; the flags are template parameters so that each loop is
// branch-free and vectorises.
template <typename T, bool kUncond, bool kClip, bool kV>
NF_CPU_CLONES void move_range(const Coefs<T>& c, T* out, const T* x, const T* m_c, const T* m_u, int64_t lo, int64_t hi) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    const auto m = c.guided(to_acc(m_c[i]), kUncond ? to_acc(m_u[i]) : 0, kUncond);
    out[i] = from_acc<T>(c.move(to_acc(x[i]), m, kV, kClip));
  }
}

template <typename T, bool kUncond, bool kClip, bool kV>
NF_CPU_CLONES void backward_range(const Coefs<T>& c, T* dx, T* dm_c, T* dm_u, const T* g, const T* x, const T* m_c,
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

// Turns the three runtime flags into template parameters: fn(bool_constant<uncond>, <clip>, <v>).
template <typename F>
void dispatch_flags(bool uncond, bool clip, bool v, F&& fn) {
  auto with_v = [&](auto u, auto c) {
    if (v) fn(u, c, std::true_type{}); else fn(u, c, std::false_type{});
  };
  auto with_clip = [&](auto u) {
    if (clip) with_v(u, std::true_type{}); else with_v(u, std::false_type{});
  };
  if (uncond) with_clip(std::true_type{}); else with_clip(std::false_type{});
}

}  // namespace

void ddim_move_cpu(const DdimMoveArgs& p, const Launch& launch) {
  check_sizes(p.B, p.N);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_flags(p.m_u != nullptr, p.clip, p.v_prediction, [&](auto u, auto cl, auto v) {
      constexpr bool U = decltype(u)::value, CL = decltype(cl)::value, V = decltype(v)::value;
      for_each_chunk(RowChunks(p.B, p.N, kChunk), launch, [&](int64_t b, int64_t lo, int64_t hi) {
        const auto c = row_coefs<T>(p.alpha_from, p.alpha_to, p.guidance, b, V, p.clip_range);
        const Row<T> r{b * p.N};
        move_range<T, U, CL, V>(c, r.out(p.out), r.in(p.x), r.in(p.m_c), r.in(p.m_u), lo, hi);
      });
    });
  });
}

void ddim_move_backward_cpu(const DdimMoveBackwardArgs& p, const Launch& launch) {
  check_sizes(p.B, p.N);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_flags(p.dm_u != nullptr, p.clip, p.v_prediction, [&](auto u, auto cl, auto v) {
      constexpr bool U = decltype(u)::value, CL = decltype(cl)::value, V = decltype(v)::value;
      for_each_chunk(RowChunks(p.B, p.N, kChunk), launch, [&](int64_t b, int64_t lo, int64_t hi) {
        const auto c = row_coefs<T>(p.alpha_from, p.alpha_to, p.guidance, b, V, p.clip_range);
        const Row<T> r{b * p.N};
        backward_range<T, U, CL, V>(c, r.out(p.dx), r.out(p.dm_c), r.out(p.dm_u), r.in(p.grad), r.in(p.x),
                                    r.in(p.m_c), r.in(p.m_u), lo, hi);
      });
    });
  });
}

}  // namespace noisefast
