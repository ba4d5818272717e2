// Shared helpers of the CPU kernels. All kernels take float32 channels_last tensors (the
// Python side converts once) and accumulate in float32.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "../common/maths.h"
#include "../common/spec.h"
#include "buffer_cache.h"

// Every kernel file of this folder is compiled once per ISA level (setup.py generates a small
// file per level that sets the target ISA, defines the macros below and includes the kernel
// file): its code lives in the namespace esr_cpu::<level> (PyTorch's CPU_CAPABILITY pattern),
// and dispatch.cpp picks one level's kernel table at run time (kernel_table.cpp, isa.h).
//   ESR_CPU_CAPABILITY  the level's namespace: baseline, avx2, avx512, avx512_bf16, or arch (an
//                       ESR_CPU_ARCH build: one level, the compiler's -march)
//   ESR_CPU_LEVEL       its ISA, one of the ESR_LEVEL_* numbers of isa.h
// A kernel file compiled on its own (no generated wrapper) is the arch level: its ISA is the
// compiler's.
#include "isa.h"
#ifndef ESR_CPU_CAPABILITY
#define ESR_CPU_CAPABILITY arch
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__FMA__) && defined(__AVX512BF16__)
#define ESR_CPU_LEVEL ESR_LEVEL_AVX512_BF16
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && defined(__FMA__)
#define ESR_CPU_LEVEL ESR_LEVEL_AVX512
#elif defined(__AVX2__) && defined(__FMA__)
#define ESR_CPU_LEVEL ESR_LEVEL_AVX2
#else
#define ESR_CPU_LEVEL ESR_LEVEL_BASELINE
#endif
#endif
#define ESR_CPU_NAMESPACE_BEGIN \
  namespace esr_cpu {           \
  namespace ESR_CPU_CAPABILITY {
#define ESR_CPU_NAMESPACE_END \
  }                           \
  }

// Forced: in large loop bodies GCC otherwise keeps these as scalar calls and the loop stops
// vectorising (measured 10x slower).
#define ESR_INLINE inline __attribute__((always_inline))

ESR_CPU_NAMESPACE_BEGIN

// Software prefetch of [p, p + bytes) into L2, one hint per 64-byte line (`write`: the lines
// are wanted for writing). The conv engine asks for its next work unit's input and output
// before the current unit's GEMMs, so that the memory traffic of the transforms and epilogues
// overlaps the compute-bound GEMMs (perf: the input loads of the Winograd row pass waited on
// memory for half the transforms' time).
inline void prefetch_span(const void* p, int64_t bytes, bool write = false) {
  const char* c = static_cast<const char*>(p);
  if (write) {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 1, 2);
  } else {
    for (int64_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 2);
  }
}

// Activation codes, residual and shortcut modes, the leaky slope and the pool geometry:
// csrc/common/spec.h, generated from esr_kernels/spec.py.
using namespace esr_spec;

// Branch-free exp and erf that GCC vectorises inside `omp simd` loops (libm's expf/erff stay
// scalar without -ffast-math, which would also change the process's denormal mode).
// exp: Cody-Waite reduction x = n ln2 + r, degree-6 Taylor polynomial on |r| <= ln2/2
// (relative error ~2e-7), scaled by 2^n through the exponent bits.
ESR_INLINE float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  // round(x / ln2) through a float->int conversion (x / ln2 is within +-127: no overflow).
  const float t = x * 1.44269504088896341f;
  const int32_t ni = static_cast<int32_t>(t + (t >= 0.0f ? 0.5f : -0.5f));
  const float n = static_cast<float>(ni);
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (ni + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// erf: Abramowitz & Stegun 7.1.26 (absolute error <= 1.5e-7), the same approximation as
// PyTorch's vectorised CPU erf, so GELU here matches eager GELU on AVX-512/AVX2 machines.
ESR_INLINE float fast_erf(float x) {
  const float ax = std::fabs(x);
  const float t = 1.0f / (1.0f + 0.3275911f * ax);
  float poly = 1.061405429f;
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const float y = 1.0f - poly * t * fast_exp(-ax * ax);
  return std::copysign(y, x);
}

ESR_INLINE float sigmoid(float x) { return 1.0f / (1.0f + fast_exp(-x)); }

// erf-form GELU, as nn.GELU().
ESR_INLINE float gelu(float x) { return 0.5f * x * (1.0f + fast_erf(x * 0.70710678118654752f)); }

template <int64_t ACT>
ESR_INLINE float activate(float x) {
  if constexpr (ACT == ACT_GELU) return gelu(x);
  else if constexpr (ACT == ACT_SILU) return x / (1.0f + fast_exp(-x));  // ATen's form
  else if constexpr (ACT == ACT_LEAKY) return x >= 0.0f ? x : x * kLeakySlope;
  else if constexpr (ACT == ACT_SIGMOID) return sigmoid(x);
  else return x;
}

// Calls fn(std::integral_constant<int64_t, ACT>{}) with the run-time activation code as a
// compile-time constant, so that the per-element loops vectorise.
template <typename Fn>
inline void dispatch_act(int64_t act, Fn&& fn) {
  switch (act) {
    case ACT_GELU: fn(std::integral_constant<int64_t, ACT_GELU>{}); break;
    case ACT_SILU: fn(std::integral_constant<int64_t, ACT_SILU>{}); break;
    case ACT_LEAKY: fn(std::integral_constant<int64_t, ACT_LEAKY>{}); break;
    case ACT_SIGMOID: fn(std::integral_constant<int64_t, ACT_SIGMOID>{}); break;
    default: fn(std::integral_constant<int64_t, ACT_NONE>{}); break;
  }
}

// Reflect padding and bilinear taps: one definition for the CPU and CUDA kernels
// (csrc/common/maths.h, __host__ __device__).
using esr_maths::bilinear_taps;
using esr_maths::reflect;
using esr_maths::Taps;

// A float32 channels_last view: element (n, c, y, x) at ((n * H + y) * W + x) * C + c.
inline at::Tensor as_nhwc(const at::Tensor& t) {
  return t.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
}

// x as float32 channels_last, with its pixel stride in *ldx: a channel slice of a float32
// channels_last tensor (a partial conv's input) is read in place (pixel stride > channels);
// anything else is copied by as_nhwc (whose result may carry arbitrary strides on size-1 dims:
// its pixel stride is the channel count).
inline at::Tensor nhwc_or_slice(const at::Tensor& x, int64_t* ldx) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const bool slice_ok = x.scalar_type() == at::kFloat && x.stride(1) == 1 && x.stride(3) >= C &&
                        x.stride(2) == W * x.stride(3) && x.stride(0) == H * W * x.stride(3);
  *ldx = slice_ok ? x.stride(3) : C;
  return slice_ok ? x : as_nhwc(x);
}

// Outputs come from the buffer cache (buffer_cache.h): no page faults on reuse.
inline at::Tensor empty_nhwc(int64_t n, int64_t c, int64_t h, int64_t w, const at::Tensor& like) {
  return cached_empty_nhwc(n, c, h, w, like);
}

ESR_CPU_NAMESPACE_END
