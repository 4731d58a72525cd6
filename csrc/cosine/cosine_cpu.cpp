// CPU per-sample cosine: partial sums per (row, chunk) in double, then each row's partials added
// in chunk order, so the result does not depend on the number of threads.
#include <vector>

#include "cosine/cosine.h"
#include "cpu_common.h"

namespace noisefast {
namespace {

constexpr int64_t kChunk = 16384;  // elements per partial sum

template <typename T>
NF_CPU_HOT void chunk_sums(const T* a, const T* b, int64_t lo, int64_t hi, double* out) {  // out: [3]
  double s_ab = 0, s_aa = 0, s_bb = 0;
#pragma omp simd reduction(+ : s_ab, s_aa, s_bb)
  for (int64_t i = lo; i < hi; ++i) {
    const double x = to_acc(a[i]), y = to_acc(b[i]);
    s_ab += x * y;
    s_aa += x * x;
    s_bb += y * y;
  }
  out[0] = s_ab; out[1] = s_aa; out[2] = s_bb;
}

// ∂L/∂a, ∂L/∂b on [lo, hi) of one row.
template <typename T>
NF_CPU_HOT void backward_range(const CosineGradCoefs<typename AccType<T>::type>& k, T* da, T* db, const T* a,
                                  const T* b, int64_t lo, int64_t hi) {
  using acc_t = typename AccType<T>::type;
#pragma omp simd
  for (int64_t i = lo; i < hi; ++i) {
    const acc_t x = to_acc(a[i]), y = to_acc(b[i]);
    da[i] = from_acc<T>(k.ka_a * x + k.ka_b * y);
    db[i] = from_acc<T>(k.kb_a * x + k.kb_b * y);
  }
}

}  // namespace

size_t cosine_workspace_bytes_cpu(int64_t B, int64_t N) {
  check_sizes(B, N);
  return size_t(RowChunks(B, N, kChunk).count()) * 3 * sizeof(double);
}

void cosine_cpu(const CosineArgs& p, const Launch& launch) {
  check_sizes(p.B, p.N);
  const RowChunks rc(p.B, p.N, kChunk);
  std::vector<double> own(p.workspace ? 0 : size_t(rc.count()) * 3);  // no workspace given: allocate here
  double* partial = p.workspace ? static_cast<double*>(p.workspace) : own.data();  // [B, chunks per row, 3]
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename AccType<T>::type;
    // 1. partial sums of every (row, chunk)
    for_each_chunk(rc, launch, [&](int64_t b, int64_t lo, int64_t hi) NF_CPU_HOT_LAMBDA {
      const Row<T> r{b * p.N};
      chunk_sums(r.in(p.a), r.in(p.b), lo, hi, partial + 3 * (b * rc.per_row + lo / rc.len));
    });
    // 2. per row: add the partials in order, then cos = s_ab / max(√s_aa·√s_bb, ε)
    for (int64_t b = 0; b < p.B; ++b) {
      double s[3] = {0, 0, 0};
      for (int64_t c = 0; c < rc.per_row; ++c)
        for (int k = 0; k < 3; ++k) s[k] += partial[3 * (b * rc.per_row + c) + k];
      for (int k = 0; k < 3; ++k) static_cast<acc_t*>(p.stats)[3 * b + k] = acc_t(s[k]);
      static_cast<T*>(p.cos)[b] = from_acc<T>(acc_t(s[0] / cosine_denominator(s[1], s[2])));
    }
  });
}

void cosine_backward_cpu(const CosineBackwardArgs& p, const Launch& launch) {
  check_sizes(p.B, p.N);
  dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename AccType<T>::type;
    const acc_t* stats = static_cast<const acc_t*>(p.stats);
    for_each_chunk(RowChunks(p.B, p.N, kChunk), launch, [&](int64_t b, int64_t lo, int64_t hi) NF_CPU_HOT_LAMBDA {
      const auto k = CosineGradCoefs<acc_t>::make(to_acc(static_cast<const T*>(p.grad)[b]), stats[3 * b],
                                                  stats[3 * b + 1], stats[3 * b + 2]);
      const Row<T> r{b * p.N};
      backward_range(k, r.out(p.da), r.out(p.db), r.in(p.a), r.in(p.b), lo, hi);
    });
  });
}

}  // namespace noisefast
