// CUDA guided DDIM move and its backward: one block per (row, chunk), 16-byte vectors, fp32 math.
#include "cuda_common.cuh"
#include "ddim_move/ddim_move.h"

namespace noisefast {
namespace cuda {
namespace {

template <typename Args>
__device__ __forceinline__ DdimCoefs<float> row_coefs(const Args& p, int64_t b) {
  const float* a = static_cast<const float*>(p.alpha_from);
  const float* a_to = static_cast<const float*>(p.alpha_to);
  const float* w = static_cast<const float*>(p.guidance);
  return DdimCoefs<float>::make(a[b], a_to[b], w[b], p.v_prediction, p.clip_range);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ddim_move_kernel(const DdimMoveArgs p, const bool vec) {
  const bool uncond = p.m_u != nullptr;
  for_each_chunk(p.B, p.N, [&](int64_t b, int64_t, int64_t lo, int64_t hi) {
    const DdimCoefs<float> c = row_coefs(p, b);
    const int64_t row = b * p.N;
    const T* x = static_cast<const T*>(p.x) + row;
    const T* m_c = static_cast<const T*>(p.m_c) + row;
    const T* m_u = uncond ? static_cast<const T*>(p.m_u) + row : nullptr;
    T* out = static_cast<T*>(p.out) + row;
    chunk_loop<T>(lo, hi, vec, [&](int64_t i, auto n) {
      constexpr int kN = decltype(n)::value;
      const Pack<kN> xi = load<T, kN>(x + i), mc = load<T, kN>(m_c + i);
      const Pack<kN> mu = uncond ? load<T, kN>(m_u + i) : Pack<kN>{};
      Pack<kN> o;
#pragma unroll
      for (int j = 0; j < kN; ++j) o.v[j] = c.move(xi.v[j], c.guided(mc.v[j], mu.v[j], uncond), p.v_prediction, p.clip);
      store<T, kN>(out + i, o);
    });
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ddim_move_backward_kernel(const DdimMoveBackwardArgs p, const bool vec) {
  const bool uncond = p.dm_u != nullptr;
  for_each_chunk(p.B, p.N, [&](int64_t b, int64_t, int64_t lo, int64_t hi) {
    const DdimCoefs<float> c = row_coefs(p, b);
    const int64_t row = b * p.N;
    const T* g = static_cast<const T*>(p.grad) + row;
    const T* x = p.clip ? static_cast<const T*>(p.x) + row : nullptr;
    const T* m_c = p.clip ? static_cast<const T*>(p.m_c) + row : nullptr;
    const T* m_u = p.clip && uncond ? static_cast<const T*>(p.m_u) + row : nullptr;
    T* dx = static_cast<T*>(p.dx) + row;
    T* dm_c = static_cast<T*>(p.dm_c) + row;
    T* dm_u = uncond ? static_cast<T*>(p.dm_u) + row : nullptr;
    chunk_loop<T>(lo, hi, vec, [&](int64_t i, auto n) {
      constexpr int kN = decltype(n)::value;
      const Pack<kN> gi = load<T, kN>(g + i);
      // x and m are read only with clipping (the clamp mask); the affine move needs g alone.
      const Pack<kN> xi = p.clip ? load<T, kN>(x + i) : Pack<kN>{};
      const Pack<kN> mc = p.clip ? load<T, kN>(m_c + i) : Pack<kN>{};
      const Pack<kN> mu = p.clip && uncond ? load<T, kN>(m_u + i) : Pack<kN>{};
      Pack<kN> ox, oc, ou;
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        float gx, gm;
        c.move_backward(gi.v[j], xi.v[j], c.guided(mc.v[j], mu.v[j], uncond), p.v_prediction, p.clip, gx, gm);
        ox.v[j] = gx;
        oc.v[j] = uncond ? c.w * gm : gm;   // m = m_u + w·(m_c − m_u)
        ou.v[j] = (1.0f - c.w) * gm;
      }
      store<T, kN>(dx + i, ox);
      store<T, kN>(dm_c + i, oc);
      if (uncond) store<T, kN>(dm_u + i, ou);
    });
  });
}

}  // namespace
}  // namespace cuda

void ddim_move_cuda(const DdimMoveArgs& p, const Launch& launch) {
  check_sizes(p.B, p.N);
  const cuda::Grid g = cuda::chunk_grid(p.B, p.N);
  if (g.empty) return;
  cuda::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = cuda::vectorisable<T>(p.B, p.N, {p.out, p.x, p.m_c, p.m_u});
    cuda::ddim_move_kernel<T><<<g.blocks, g.threads, 0, cuda::stream_of(launch)>>>(p, vec);
  });
  cuda::check_launch("ddim_move");
}

void ddim_move_backward_cuda(const DdimMoveBackwardArgs& p, const Launch& launch) {
  check_sizes(p.B, p.N);
  const cuda::Grid g = cuda::chunk_grid(p.B, p.N);
  if (g.empty) return;
  cuda::dispatch_dtype(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    const bool vec = cuda::vectorisable<T>(p.B, p.N, {p.dx, p.dm_c, p.dm_u, p.grad, p.x, p.m_c, p.m_u});
    cuda::ddim_move_backward_kernel<T><<<g.blocks, g.threads, 0, cuda::stream_of(launch)>>>(p, vec);
  });
  cuda::check_launch("ddim_move_backward");
}

}  // namespace noisefast
