// CUDA guided DDIM move and its backward: one block per (row, chunk), 16-byte vectors, fp32 math.
#include "cuda_common.cuh"
#include "ddim_move/ddim_move.h"

namespace noisefast {
namespace cuda {
namespace {

// The forward and the backward share the walk: body(coefs, b, lo, hi) for every (row b, chunk [lo, hi)).
template <typename Args, typename Body>
__device__ __forceinline__ void for_each_move_chunk(const Args& p, Body&& body) {
  const float* a = static_cast<const float*>(p.alpha_from);
  const float* a_to = static_cast<const float*>(p.alpha_to);
  const float* w = static_cast<const float*>(p.guidance);
  for_each_chunk(p.B, p.N, [&](int64_t b, int64_t, int64_t lo, int64_t hi) {
    body(DdimCoefs<float>::make(a[b], a_to[b], w[b], p.v_prediction, p.flow, p.clip_range), b, lo, hi);
  });
}

template <typename T>
__global__ void __launch_bounds__(kThreads) ddim_move_kernel(const DdimMoveArgs p, const bool vec) {
  const bool uncond = p.m_u != nullptr;
  for_each_move_chunk(p, [&](const DdimCoefs<float>& c, int64_t b, int64_t lo, int64_t hi) {
    const Row<T> r{b * p.N};
    const T *x = r.in(p.x), *m_c = r.in(p.m_c), *m_u = r.in(p.m_u);
    T* out = r.out(p.out);
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
  for_each_move_chunk(p, [&](const DdimCoefs<float>& c, int64_t b, int64_t lo, int64_t hi) {
    const Row<T> r{b * p.N};
    // x and the model outputs are given (and read) only with clipping: the clamp mask.
    const T *g = r.in(p.grad), *x = r.in(p.x), *m_c = r.in(p.m_c), *m_u = r.in(p.m_u);
    T *dx = r.out(p.dx), *dm_c = r.out(p.dm_c), *dm_u = r.out(p.dm_u);
    chunk_loop<T>(lo, hi, vec, [&](int64_t i, auto n) {
      constexpr int kN = decltype(n)::value;
      const Pack<kN> gi = load<T, kN>(g + i);
      const Pack<kN> xi = p.clip ? load<T, kN>(x + i) : Pack<kN>{};
      const Pack<kN> mc = p.clip ? load<T, kN>(m_c + i) : Pack<kN>{};
      const Pack<kN> mu = p.clip && uncond ? load<T, kN>(m_u + i) : Pack<kN>{};
      Pack<kN> ox, oc, ou;
#pragma unroll
      for (int j = 0; j < kN; ++j) {
        float gx, gm;
        c.move_backward(gi.v[j], xi.v[j], c.guided(mc.v[j], mu.v[j], uncond), p.v_prediction, p.clip, gx, gm);
        ox.v[j] = gx;
        oc.v[j] = uncond ? c.w * gm : gm;  // m = m_u + w·(m_c − m_u)
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
  cuda::launch_chunked("ddim_move", p.dtype, p.B, p.N, [&](auto tag, const cuda::Grid& g) {
    using T = decltype(tag);
    const bool vec = cuda::vectorisable<T>(p.B, p.N, {p.out, p.x, p.m_c, p.m_u});
    cuda::ddim_move_kernel<T><<<g.blocks, g.threads, 0, cuda::stream_of(launch)>>>(p, vec);
  });
}

void ddim_move_backward_cuda(const DdimMoveBackwardArgs& p, const Launch& launch) {
  cuda::launch_chunked("ddim_move_backward", p.dtype, p.B, p.N, [&](auto tag, const cuda::Grid& g) {
    using T = decltype(tag);
    const bool vec = cuda::vectorisable<T>(p.B, p.N, {p.dx, p.dm_c, p.dm_u, p.grad, p.x, p.m_c, p.m_u});
    cuda::ddim_move_backward_kernel<T><<<g.blocks, g.threads, 0, cuda::stream_of(launch)>>>(p, vec);
  });
}

}  // namespace noisefast
