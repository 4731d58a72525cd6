// Host-side helpers for the CPU kernels: fp16/bf16 storage types with exact IEEE conversions
// (round to nearest even, subnormals, inf and NaN kept), accumulation types, dtype dispatch and
// the OpenMP loop over (row, chunk) tasks.
#pragma once

#include <cmath>
#include <cstring>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "common.h"
#include "cpu_isa.h"

namespace noisefast {

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

inline uint32_t f32_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float bits_f32(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// fp16 → fp32. Normal numbers: move the exponent/mantissa into place and rescale by 2^-112 (which
// also turns the fp16 inf/NaN exponent into the fp32 one); subnormals: build 0.5 + m·2^-24 as a
// float and subtract 0.5 (exact).
inline float half_to_float(uint16_t h) {
  const uint32_t w = uint32_t(h) << 16, sign = w & 0x80000000u, two_w = w + w;
  const float normal = bits_f32((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  const float subnormal = bits_f32((two_w >> 17) | (126u << 23)) - 0.5f;
  return bits_f32(sign | (two_w < (1u << 27) ? f32_bits(subnormal) : f32_bits(normal)));
}

// fp32 → fp16, round to nearest even. Scaling by 2^112·2^-110 saturates to inf past the fp16 range;
// adding a power of two chosen from the exponent makes the FPU round the mantissa to 10 bits.
inline uint16_t float_to_half(float f) {
  float base = (std::fabs(f) * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_bits(f), shl1_w = w + w, sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;
  base = bits_f32((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  return uint16_t((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
}

inline float bf16_to_float(uint16_t b) { return bits_f32(uint32_t(b) << 16); }

inline uint16_t float_to_bf16(float f) {  // round to nearest even; NaN stays a (quiet) NaN
  const uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return uint16_t((u >> 16) | 0x0040u);
  return uint16_t((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
}

// Storage ↔ accumulation. fp16/bf16/fp32 compute in float, fp64 in double.
template <typename T> struct AccType { using type = float; };
template <> struct AccType<double> { using type = double; };

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(Half v) { return half_to_float(v.bits); }
inline float to_acc(BFloat16 v) { return bf16_to_float(v.bits); }

template <typename T> inline T from_acc(typename AccType<T>::type v);
template <> inline float from_acc<float>(float v) { return v; }
template <> inline double from_acc<double>(double v) { return v; }
template <> inline Half from_acc<Half>(float v) { return Half{float_to_half(v)}; }
template <> inline BFloat16 from_acc<BFloat16>(float v) { return BFloat16{float_to_bf16(v)}; }

// Calls f(T{}) with T the storage type of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kFloat16: f(Half{}); break;
    case DType::kBFloat16: f(BFloat16{}); break;
  }
}

// Below this many elements a call runs on one thread: waking the pool costs more than it saves.
constexpr int64_t kParallelGrain = 32768;

// Runs body(b, lo, hi) for every (row b, chunk [lo, hi)) of `rc`, spread over OpenMP threads,
// compiled for the CPU ISA level in use (cpu_isa.h; read once per call). `body` and every hot
// loop it calls must be NF_CPU_HOT(_LAMBDA), so that they are compiled into the ISA trampoline.
template <typename Body>
void for_each_chunk(const RowChunks& rc, const Launch& launch, Body&& body) {
  const int64_t tasks = rc.count();
  const int isa = cpu_isa_current();
#if defined(_OPENMP)
  const int nt = launch.nthreads > 0 ? int(launch.nthreads) : omp_get_max_threads();
  const bool parallel = tasks > 1 && nt > 1 && rc.B * rc.N >= kParallelGrain;
#pragma omp parallel for schedule(static) num_threads(nt) if (parallel)
#else
  (void)launch;
#endif
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t b = t / rc.per_row, lo = (t % rc.per_row) * rc.len;
    run_chunk(isa, body, b, lo, lo + rc.len < rc.N ? lo + rc.len : rc.N);
  }
}

}  // namespace noisefast
