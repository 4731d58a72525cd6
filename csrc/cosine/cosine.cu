// CUDA per-sample cosine: (1) one block per (row, chunk) writes the chunk's three sums,
// (2) one warp per row adds its partials in order and writes stats and cos — deterministic.
// Backward: one elementwise pass writing ∂L/∂a and ∂L/∂b.
#include "cosine/cosine.h"
#include "cuda_common.cuh"

namespace noisefast {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) cosine_partial_kernel(const CosineArgs p, const bool vec) {
  double* partial = static_cast<double*>(p.workspace);  // [B, chunks per row, 3]
  const int64_t per_row = chunks_per_row(p.N);
  for_each_chunk(p.B, p.N, [&](int64_t b, int64_t c, int64_t lo, int64_t hi) {
    const Row<T> r{b * p.N};
    const T *a = r.in(p.a), *bb = r.in(p.b);
    float s_ab = 0.f, s_aa = 0.f, s_bb = 0.f;  // a thread sums a few elements in float ...
    chunk_loop<T>(lo, hi, vec, [&](int64_t i, auto n) {
      constexpr int kN = decltype(n)::value;
      const Pack<kN> x = load<T, kN>(a + i), y = load<T, kN>(bb + i);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        s_ab = fmaf(x.v[j], y.v[j], s_ab);
        s_aa = fmaf(x.v[j], x.v[j], s_aa);
        s_bb = fmaf(y.v[j], y.v[j], s_bb);
      }
    });
    double s[3] = {s_ab, s_aa, s_bb};  // ... the block and the rows add in double
    block_sum(s);
    if (threadIdx.x == 0)
      for (int k = 0; k < 3; ++k) partial[3 * (b * per_row + c) + k] = s[k];
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) cosine_finalize_kernel(const CosineArgs p) {
  const double* partial = static_cast<const double*>(p.workspace);
  const int64_t per_row = chunks_per_row(p.N);
  const int64_t warps = blockDim.x / 32;
  for (int64_t b = int64_t(blockIdx.x) * warps + threadIdx.x / 32; b < p.B; b += int64_t(gridDim.x) * warps) {
    double s[3];
    for (int k = 0; k < 3; ++k) s[k] = warp_sum_strided(partial + 3 * b * per_row + k, per_row, 3);
    if (threadIdx.x % 32 == 0) {
      for (int k = 0; k < 3; ++k) static_cast<float*>(p.stats)[3 * b + k] = float(s[k]);
      static_cast<T*>(p.cos)[b] = from_acc<T>(float(s[0] / cosine_denominator(s[1], s[2])));
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) cosine_backward_kernel(const CosineBackwardArgs p, const bool vec) {
  for_each_chunk(p.B, p.N, [&](int64_t b, int64_t, int64_t lo, int64_t hi) {
    const float* st = static_cast<const float*>(p.stats) + 3 * b;
    const auto k = CosineGradCoefs<float>::make(to_acc(static_cast<const T*>(p.grad)[b]), st[0], st[1], st[2]);
    const Row<T> r{b * p.N};
    const T *a = r.in(p.a), *bb = r.in(p.b);
    T *da = r.out(p.da), *db = r.out(p.db);
    chunk_loop<T>(lo, hi, vec, [&](int64_t i, auto n) {
      constexpr int kN = decltype(n)::value;
      const Pack<kN> x = load<T, kN>(a + i), y = load<T, kN>(bb + i);
      Pack<kN> ga, gb;
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        ga.v[j] = k.ka_a * x.v[j] + k.ka_b * y.v[j];
        gb.v[j] = k.kb_a * x.v[j] + k.kb_b * y.v[j];
      }
      store<T, kN>(da + i, ga);
      store<T, kN>(db + i, gb);
    });
  });
}

}  // namespace
}  // namespace cuda

size_t cosine_workspace_bytes_cuda(int64_t B, int64_t N) {
  check_sizes(B, N);
  return size_t(B * cuda::chunks_per_row(N)) * 3 * sizeof(double);
}

void cosine_cuda(const CosineArgs& p, const Launch& launch) {
  const cudaStream_t stream = cuda::stream_of(launch);
  // 1. partial sums per (row, chunk); nothing to launch for N = 0 (all sums are 0)
  cuda::launch_chunked("cosine_partial", p.dtype, p.B, p.N, [&](auto tag, const cuda::Grid& g) {
    using T = decltype(tag);
    cuda::cosine_partial_kernel<T><<<g.blocks, g.threads, 0, stream>>>(p, cuda::vectorisable<T>(p.B, p.N, {p.a, p.b}));
  });
  // 2. one warp per row: stats and cos
  if (p.B == 0) return;
  const int64_t rows_per_block = cuda::kThreads / 32, blocks = (p.B + rows_per_block - 1) / rows_per_block;
  cuda::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    cuda::cosine_finalize_kernel<T><<<unsigned(blocks < 65535 ? blocks : 65535), cuda::kThreads, 0, stream>>>(p);
  });
  cuda::check_launch("cosine_finalize");
}

void cosine_backward_cuda(const CosineBackwardArgs& p, const Launch& launch) {
  cuda::launch_chunked("cosine_backward", p.dtype, p.B, p.N, [&](auto tag, const cuda::Grid& g) {
    using T = decltype(tag);
    const bool vec = cuda::vectorisable<T>(p.B, p.N, {p.da, p.db, p.a, p.b});
    cuda::cosine_backward_kernel<T><<<g.blocks, g.threads, 0, cuda::stream_of(launch)>>>(p, vec);
  });
}

}  // namespace noisefast
