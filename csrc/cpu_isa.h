// Which instruction set the CPU kernels' hot loops run with, and the switch between the compiled
// versions.
//
// Every hot loop is compiled three times on x86-64 — baseline (SSE2), AVX2+FMA (x86-64-v3) and
// AVX-512 (F/VL/BW/DQ/CD, x86-64-v4) — by instantiating it inside one of three `target(...)`
// trampolines (run_chunk_* below); everything the trampoline calls is forced inline into it
// (NF_CPU_HOT), so the whole loop body is compiled for that ISA. Which trampoline runs is read
// from one atomic per kernel call, so the level can be
//   * capped at load time: NOISEFAST_CPU_ISA=baseline|avx2|avx512 (like PyTorch's
//     ATEN_CPU_CAPABILITY, oneDNN's ONEDNN_MAX_CPU_ISA), see bindings_cpu.cpp;
//   * switched at run time: noisefast._C.set_cpu_isa(name), so the tests run every version this
//     CPU can execute, on any machine.
// A level the CPU lacks is never selected (no SIGILL). Other architectures: only "baseline".
// The build stays portable: no -march flag, the trampolines carry their own target attributes.
#pragma once

#include <atomic>
#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define NF_X86_ISA 1
#define NF_TARGET_AVX2 __attribute__((target("avx2,fma,bmi,bmi2,popcnt")))
#define NF_TARGET_AVX512 \
  __attribute__((target("avx2,fma,bmi,bmi2,popcnt,avx512f,avx512vl,avx512bw,avx512dq,avx512cd")))
#else
#define NF_X86_ISA 0
#endif

// Hot loops and the lambdas that call them: always inlined, so they are compiled as part of the
// ISA trampoline that runs them (a default-target function may be inlined into a target one).
#if defined(__GNUC__) || defined(__clang__)
#define NF_CPU_HOT inline __attribute__((always_inline))    // functions
#define NF_CPU_HOT_LAMBDA __attribute__((always_inline))    // lambdas: [&](...) NF_CPU_HOT_LAMBDA { ... }
#else
#define NF_CPU_HOT inline
#define NF_CPU_HOT_LAMBDA
#endif

namespace noisefast {

enum CpuIsa : int { kIsaBaseline = 0, kIsaAvx2 = 1, kIsaAvx512 = 2 };
constexpr int kIsaCount = 3;
constexpr const char* kIsaNames[kIsaCount] = {"baseline", "avx2", "avx512"};

// Highest level compiled into this build.
constexpr int cpu_isa_compiled_max() { return NF_X86_ISA ? kIsaAvx512 : kIsaBaseline; }

// Highest compiled level this CPU (and OS: libgcc checks XCR0 for the AVX/AVX-512 state) runs.
inline int cpu_isa_supported_max() {
#if NF_X86_ISA
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") &&
                    __builtin_cpu_supports("popcnt");
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512cd");
  return avx512 ? kIsaAvx512 : (avx2 ? kIsaAvx2 : kIsaBaseline);
#else
  return kIsaBaseline;
#endif
}

// -1 = unknown name.
inline int cpu_isa_from_name(const std::string& name) {
  for (int i = 0; i < kIsaCount; ++i)
    if (name == kIsaNames[i]) return i;
  return -1;
}

inline std::vector<std::string> cpu_isa_names_upto(int level) {
  return std::vector<std::string>(kIsaNames, kIsaNames + level + 1);
}

// The level in use (one per process; the kernels read it once per call).
inline std::atomic<int>& cpu_isa_state() {
  static std::atomic<int> level{cpu_isa_supported_max()};
  return level;
}
inline int cpu_isa_current() { return cpu_isa_state().load(std::memory_order_relaxed); }

// Sets the level; `level` must be ≤ cpu_isa_supported_max() (callers check). Returns the previous.
inline int cpu_isa_set(int level) { return cpu_isa_state().exchange(level, std::memory_order_relaxed); }

// The trampolines: body(b, lo, hi) compiled for one ISA each.
template <typename Body>
void run_chunk_baseline(Body& body, int64_t b, int64_t lo, int64_t hi) { body(b, lo, hi); }
#if NF_X86_ISA
template <typename Body>
NF_TARGET_AVX2 void run_chunk_avx2(Body& body, int64_t b, int64_t lo, int64_t hi) { body(b, lo, hi); }
template <typename Body>
NF_TARGET_AVX512 void run_chunk_avx512(Body& body, int64_t b, int64_t lo, int64_t hi) { body(b, lo, hi); }
#endif

template <typename Body>
inline void run_chunk(int isa, Body& body, int64_t b, int64_t lo, int64_t hi) {
#if NF_X86_ISA
  if (isa == kIsaAvx512) return run_chunk_avx512(body, b, lo, hi);
  if (isa == kIsaAvx2) return run_chunk_avx2(body, b, lo, hi);
#else
  (void)isa;
#endif
  run_chunk_baseline(body, b, lo, hi);
}

}  // namespace noisefast
