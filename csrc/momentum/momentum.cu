// CUDA momentum step: (1) one block per (row, chunk) updates x and v in place and, when
// renormalising, writes the chunk's Σx²; (2) each block adds its row's partials in order and
// rescales its chunk (every block of a row computes the same scale).
#include "cuda_common.cuh"
#include "momentum/momentum.h"

namespace noisefast {
namespace cuda {
namespace {

template <typename T>
__global__ void __launch_bounds__(kThreads) momentum_update_kernel(const MomentumArgs p, const bool vec) {
  double* partial = static_cast<double*>(p.workspace);  // [B, chunks per row] or unused
  const int64_t per_row = chunks_per_row(p.N);
  const float mu = float(p.momentum);
  for_each_chunk(p.B, p.N, [&](int64_t b, int64_t c, int64_t lo, int64_t hi) {
    const float lr = static_cast<const float*>(p.lr)[b];
    const Row<T> r{b * p.N};
    T *x = r.out(p.x), *v = r.out(p.velocity);
    const T* g = r.in(p.grad);
    float sum_sq = 0.f;
    chunk_loop<T>(lo, hi, vec, [&](int64_t i, auto n) {
      constexpr int kN = decltype(n)::value;
      Pack<kN> xi = load<T, kN>(x + i), vi = load<T, kN>(v + i);
      const Pack<kN> gi = load<T, kN>(g + i);
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        xi.v[j] = momentum_element(xi.v[j], gi.v[j], vi.v[j], lr, mu, p.nesterov);
        if (p.renorm) {
          const float stored = to_acc(from_acc<T>(xi.v[j]));  // the norm of what is stored
          sum_sq = fmaf(stored, stored, sum_sq);
        }
      }
      store<T, kN>(x + i, xi);
      store<T, kN>(v + i, vi);
    });
    if (p.renorm) {
      double s[1] = {sum_sq};
      block_sum(s);
      if (threadIdx.x == 0) partial[b * per_row + c] = s[0];
    }
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) momentum_renorm_kernel(const MomentumArgs p, const bool vec) {
  __shared__ float scale;
  const double* partial = static_cast<const double*>(p.workspace);
  const int64_t per_row = chunks_per_row(p.N);
  for_each_chunk(p.B, p.N, [&](int64_t b, int64_t, int64_t lo, int64_t hi) {
    if (threadIdx.x < 32) {
      const double sum_sq = warp_sum_strided(partial + b * per_row, per_row, 1);
      if (threadIdx.x == 0) scale = float(renorm_scale(static_cast<const float*>(p.renorm)[b], sum_sq));
    }
    __syncthreads();
    const float s = scale;
    T* x = Row<T>{b * p.N}.out(p.x);
    chunk_loop<T>(lo, hi, vec, [&](int64_t i, auto n) {
      constexpr int kN = decltype(n)::value;
      Pack<kN> xi = load<T, kN>(x + i);
#pragma unroll
      for (int j = 0; j < kN; ++j) xi.v[j] *= s;
      store<T, kN>(x + i, xi);
    });
    __syncthreads();  // `scale` is rewritten for the block's next chunk
  });
}

}  // namespace
}  // namespace cuda

size_t momentum_workspace_bytes_cuda(int64_t B, int64_t N) {
  check_sizes(B, N);
  return size_t(B * cuda::chunks_per_row(N)) * sizeof(double);
}

void momentum_step_cuda(const MomentumArgs& p, const Launch& launch) {
  const cudaStream_t stream = cuda::stream_of(launch);
  bool vec = false;
  // 1-2. update x and v (and the chunks' Σx² with renorm)
  cuda::launch_chunked("momentum_update", p.dtype, p.B, p.N, [&](auto tag, const cuda::Grid& g) {
    using T = decltype(tag);
    vec = cuda::vectorisable<T>(p.B, p.N, {p.x, p.grad, p.velocity});
    cuda::momentum_update_kernel<T><<<g.blocks, g.threads, 0, stream>>>(p, vec);
  });
  if (!p.renorm) return;
  // 3. rescale each row
  cuda::launch_chunked("momentum_renorm", p.dtype, p.B, p.N, [&](auto tag, const cuda::Grid& g) {
    cuda::momentum_renorm_kernel<decltype(tag)><<<g.blocks, g.threads, 0, stream>>>(p, vec);
  });
}

}  // namespace noisefast
