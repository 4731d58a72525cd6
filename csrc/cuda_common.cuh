// Device-side helpers for the CUDA kernels: storage types (fp32, fp16, bf16), 16-byte vector
// loads/stores, the per-block loop over one (row, chunk), deterministic block sums, launch checks.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <initializer_list>
#include <type_traits>

#include "common.h"

namespace noisefast {
namespace cuda {

constexpr int kThreads = 256;      // threads per block
constexpr int64_t kChunk = 2048;   // elements of one row per block (multiple of 8: chunk starts stay 16-byte aligned)

__device__ __forceinline__ float to_acc(float v) { return v; }
__device__ __forceinline__ float to_acc(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_acc(float v);
template <> __device__ __forceinline__ float from_acc<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_acc<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_acc<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

template <typename T> constexpr int kVec = 16 / sizeof(T);  // elements per 16-byte vector

// kN consecutive elements in float: kN = kVec<T> moves 16 bytes at once, kN = 1 one element.
template <int kN> struct Pack { float v[kN]; };

template <typename T, int kN>
__device__ __forceinline__ Pack<kN> load(const T* p) {
  Pack<kN> out;
  if constexpr (kN == 1) {
    out.v[0] = to_acc(*p);
  } else {
    static_assert(kN == kVec<T>, "vector loads move 16 bytes");
    const uint4 raw = *reinterpret_cast<const uint4*>(p);
    const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
    for (int j = 0; j < kN; ++j) out.v[j] = to_acc(e[j]);
  }
  return out;
}

template <typename T, int kN>
__device__ __forceinline__ void store(T* p, const Pack<kN>& in) {
  if constexpr (kN == 1) {
    *p = from_acc<T>(in.v[0]);
  } else {
    uint4 raw;
    T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
    for (int j = 0; j < kN; ++j) e[j] = from_acc<T>(in.v[j]);
    *reinterpret_cast<uint4*>(p) = raw;
  }
}

// The block's share of elements [lo, hi) of a row: body(i, std::integral_constant<int, kN>) handles
// elements i..i+kN−1; 16-byte vectors first when `vec` (every base address aligned and every row
// start too), then the scalar remainder.
template <typename T, typename Body>
__device__ __forceinline__ void chunk_loop(int64_t lo, int64_t hi, bool vec, Body&& body) {
  constexpr int kV = kVec<T>;
  int64_t tail = lo;
  if (vec) {
    const int64_t n_vec = (hi - lo) / kV;
    for (int64_t k = threadIdx.x; k < n_vec; k += blockDim.x) body(lo + k * kV, std::integral_constant<int, kV>{});
    tail = lo + n_vec * kV;
  }
  for (int64_t i = tail + threadIdx.x; i < hi; i += blockDim.x) body(i, std::integral_constant<int, 1>{});
}

NF_HD int64_t chunks_per_row(int64_t N) { return (N + kChunk - 1) / kChunk; }

// Grid-stride over every (row b, chunk c = [lo, hi)): blockIdx.x walks chunks, blockIdx.y rows.
template <typename Body>
__device__ __forceinline__ void for_each_chunk(int64_t B, int64_t N, Body&& body) {
  const int64_t per_row = chunks_per_row(N);
  for (int64_t b = blockIdx.y; b < B; b += gridDim.y)
    for (int64_t c = blockIdx.x; c < per_row; c += gridDim.x)
      body(b, c, c * kChunk, (c + 1) * kChunk < N ? (c + 1) * kChunk : N);
}

__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

// Sums v[k] over the block in a fixed order; the totals are valid in thread 0.
template <int K>
__device__ __forceinline__ void block_sum(double (&v)[K]) {
  __shared__ double smem[K][kThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int k = 0; k < K; ++k) {
    v[k] = warp_sum(v[k]);
    if (lane == 0) smem[k][warp] = v[k];
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) v[k] = warp_sum(lane < int(blockDim.x / 32) ? smem[k][lane] : 0.0);
  }
  __syncthreads();  // smem is free again for the block's next chunk
}

// Sum of partial[0..n) in a fixed order by one warp; valid in lane 0.
__device__ __forceinline__ double warp_sum_strided(const double* partial, int64_t n, int64_t stride) {
  double s = 0;
  for (int64_t c = threadIdx.x % 32; c < n; c += 32) s += partial[c * stride];
  return warp_sum(s);
}

struct Grid {
  dim3 blocks, threads;
  bool empty;
};

inline Grid chunk_grid(int64_t B, int64_t N) {
  const int64_t per_row = chunks_per_row(N);
  Grid g{dim3(unsigned(per_row < INT_MAX ? per_row : INT_MAX), unsigned(B < 65535 ? B : 65535)), dim3(kThreads),
         B == 0 || N == 0};
  return g;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// 16-byte vectors are usable when every given address is aligned and every row starts aligned.
template <typename T>
bool vectorisable(int64_t B, int64_t N, std::initializer_list<const void*> ptrs) {
  if (B > 1 && N % kVec<T> != 0) return false;
  for (const void* p : ptrs)
    if (p && !aligned16(p)) return false;
  return true;
}

inline cudaStream_t stream_of(const Launch& l) { return reinterpret_cast<cudaStream_t>(l.stream); }

inline void check_launch(const char* kernel) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("noisefast: CUDA kernel ") + kernel + " failed to launch: " + cudaGetErrorString(err));
}

// Calls f(T{}) with T the device storage type of `dtype`; float64 has no CUDA kernel.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat16: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
    default: throw std::invalid_argument("noisefast: the CUDA kernels take float32, float16 or bfloat16 storage");
  }
}

// Host side of the chunked kernels: validates the sizes, skips empty work, picks the storage type,
// calls launch_one(T{}, grid) to launch the kernel, then checks that the launch worked.
template <typename F>
void launch_chunked(const char* kernel, DType dtype, int64_t B, int64_t N, F&& launch_one) {
  check_sizes(B, N);
  const Grid grid = chunk_grid(B, N);
  if (grid.empty) return;
  dispatch_dtype(dtype, [&](auto tag) { launch_one(tag, grid); });
  check_launch(kernel);
}

}  // namespace cuda
}  // namespace noisefast
