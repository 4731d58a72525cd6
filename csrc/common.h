// Shared by every kernel family, host (C++17) and device (CUDA) alike: dtype codes, launch
// settings, the host/device qualifier, and the row/chunk split that makes every reduction
// deterministic (it depends on the sizes only, never on thread counts or the GPU).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define NF_HD __host__ __device__ __forceinline__
#else
#define NF_HD inline
#endif

namespace noisefast {

// Storage dtype codes; noisefast/_ext.py holds the same table (DTYPE_CODES).
enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

inline DType to_dtype(int code) {
  if (code < 0 || code > 3) throw std::invalid_argument("noisefast: unknown dtype code " + std::to_string(code));
  return static_cast<DType>(code);
}

// Where a kernel runs: CPU kernels read `nthreads` (0 = OpenMP default), CUDA kernels `stream`
// (a cudaStream_t as an integer, 0 = legacy default stream). Each backend ignores the other field.
struct Launch {
  int64_t nthreads = 0;
  uintptr_t stream = 0;
};

// Every tensor is viewed as a contiguous [B, N] matrix (N = numel per sample). Rows are cut into
// chunks of kChunk elements (the last one shorter); reductions first sum each (row, chunk) into a
// partial, then add the partials of a row in chunk order. kChunk is a multiple of 8, so chunk
// starts keep 16-byte alignment for every storage dtype.
struct RowChunks {
  int64_t B, N, len, per_row;
  RowChunks(int64_t B_, int64_t N_, int64_t chunk) : B(B_), N(N_), len(chunk), per_row(N_ > 0 ? (N_ + chunk - 1) / chunk : 0) {}
  int64_t count() const { return B * per_row; }
};

// Row b of a [B, N] buffer of T (nullptr stays nullptr: optional inputs/outputs).
template <typename T>
struct Row {
  int64_t offset;  // b·N
  NF_HD T* out(void* p) const { return p ? static_cast<T*>(p) + offset : nullptr; }
  NF_HD const T* in(const void* p) const { return p ? static_cast<const T*>(p) + offset : nullptr; }
};

inline void check_sizes(int64_t B, int64_t N) {
  if (B < 0 || N < 0) throw std::invalid_argument("noisefast: negative sizes B=" + std::to_string(B) + ", N=" + std::to_string(N));
}

}  // namespace noisefast
