// CPU momentum step: pass 1 updates x and v (and sums x² per (row, chunk) when renormalising),
// pass 2 rescales each row.
#include <vector>

#include "cpu_common.h"
#include "momentum/momentum.h"

namespace noisefast {
namespace {

constexpr int64_t kChunk = 8192;  // elements per OpenMP task / partial sum

// Steps 1-2 on [lo, hi) of one row; returns Σ x_new² (of the stored values) when kSumSq.
template <typename T, bool kNesterov, bool kSumSq>
NF_CPU_HOT double update_range(T* x, const T* g, T* v, typename AccType<T>::type lr, typename AccType<T>::type mu,
                    int64_t lo, int64_t hi) {
  using acc_t = typename AccType<T>::type;
  double sum_sq = 0;
#pragma omp simd reduction(+ : sum_sq)
  for (int64_t i = lo; i < hi; ++i) {
    acc_t vi = to_acc(v[i]);
    const T xs = from_acc<T>(momentum_element(to_acc(x[i]), to_acc(g[i]), vi, lr, mu, kNesterov));
    v[i] = from_acc<T>(vi);
    x[i] = xs;
    if (kSumSq) {
      const double xd = to_acc(xs);
      sum_sq += xd * xd;
    }
  }
  return sum_sq;
}

template <typename T>
NF_CPU_HOT void scale_range(T* x, typename AccType<T>::type scale, int64_t lo, int64_t hi) {
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) x[i] = from_acc<T>(to_acc(x[i]) * scale);
}

}  // namespace

size_t momentum_workspace_bytes_cpu(int64_t B, int64_t N) {
  check_sizes(B, N);
  return size_t(RowChunks(B, N, kChunk).count()) * sizeof(double);
}

void momentum_step_cpu(const MomentumArgs& p, const Launch& launch) {
  check_sizes(p.B, p.N);
  const RowChunks rc(p.B, p.N, kChunk);
  std::vector<double> own(p.renorm && !p.workspace ? size_t(rc.count()) : 0);  // no workspace given: allocate here
  double* partial = p.workspace ? static_cast<double*>(p.workspace) : own.data();  // [B, chunks per row]
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename AccType<T>::type;
    const acc_t* lr = static_cast<const acc_t*>(p.lr);
    const acc_t mu = acc_t(p.momentum);
    // 1-2. v ← μ·v + g;  x ← x − lr·(v or g + μ·v)
    for_each_chunk(rc, launch, [&](int64_t b, int64_t lo, int64_t hi) NF_CPU_HOT_LAMBDA {
      const Row<T> r{b * p.N};
      T *x = r.out(p.x), *v = r.out(p.velocity);
      const T* g = r.in(p.grad);
      double s;
      if (p.renorm)
        s = p.nesterov ? update_range<T, true, true>(x, g, v, lr[b], mu, lo, hi)
                       : update_range<T, false, true>(x, g, v, lr[b], mu, lo, hi);
      else
        s = p.nesterov ? update_range<T, true, false>(x, g, v, lr[b], mu, lo, hi)
                       : update_range<T, false, false>(x, g, v, lr[b], mu, lo, hi);
      if (p.renorm) partial[b * rc.per_row + lo / rc.len] = s;
    });
    if (!p.renorm) return;
    // 3. x ← x · ρ / max(‖x‖, ε)
    for_each_chunk(rc, launch, [&](int64_t b, int64_t lo, int64_t hi) NF_CPU_HOT_LAMBDA {
      double sum_sq = 0;
      for (int64_t c = 0; c < rc.per_row; ++c) sum_sq += partial[b * rc.per_row + c];
      const acc_t scale = acc_t(renorm_scale(double(static_cast<const acc_t*>(p.renorm)[b]), sum_sq));
      scale_range(Row<T>{b * p.N}.out(p.x), scale, lo, hi);
    });
  });
}

}  // namespace noisefast
