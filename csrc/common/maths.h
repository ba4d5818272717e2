// Scalar maths shared by the CUDA kernels (device) and the CPU extension (host), as ATen shares
// functors between its CPU and CUDA kernels: one definition of each formula, so the CPU build
// (and CI) executes the same arithmetic lines as the GPU. float32 throughout.
#pragma once

#include <math.h>

#include <cstdint>

#include "spec.h"

#if defined(__CUDACC__)
#define ESR_HD __host__ __device__ __forceinline__
// Loops over template channel counts are unrolled so per-thread arrays stay in registers
// (an array indexed by a run-time value goes to the stack).
#define ESR_UNROLL _Pragma("unroll")
// Loops whose body does not index a register array: kept rolled (code size).
#define ESR_NO_UNROLL _Pragma("unroll 1")
#else
#define ESR_HD inline __attribute__((always_inline))
#define ESR_UNROLL
#define ESR_NO_UNROLL
#endif

namespace esr_maths {

// A compiler memory barrier (no instruction). Placed at the top of a loop over taps or window
// positions, it keeps the compiler from hoisting the weight loads (the same C x C values in
// every iteration) out of the loop into C x C registers, which spilled 4.6 KB per thread.
ESR_HD void reload_weights_barrier() { asm volatile("" ::: "memory"); }

ESR_HD float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

// erf form, as nn.GELU() (not the tanh approximation).
ESR_HD float gelu(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

// ATen's form: x / (1 + exp(-x)).
ESR_HD float silu(float x) { return x / (1.0f + expf(-x)); }

// SPAN's parameter-free attention (RES_SPAN_ATT) of the activated conv output z and the block
// input x, given s = sigmoid(z) (taken apart so a caller can compute the sigmoids as one vector
// span): (z + x) * (sigmoid(z) - 0.5), PyTorch's order.
ESR_HD float span_attention(float z, float x, float s) { return (z + x) * (s - 0.5f); }

ESR_HD float leaky_relu(float x) { return x >= 0.0f ? x : x * esr_spec::kLeakySlope; }

template <int64_t ACT>
ESR_HD float activate(float x) {
  if constexpr (ACT == esr_spec::ACT_GELU) return gelu(x);
  else if constexpr (ACT == esr_spec::ACT_SILU) return silu(x);
  else if constexpr (ACT == esr_spec::ACT_LEAKY) return leaky_relu(x);
  else if constexpr (ACT == esr_spec::ACT_SIGMOID) return sigmoid(x);
  else return x;
}

// max as max_pool2d takes it: a NaN wins (fmaxf would drop it).
ESR_HD float nan_max(float best, float v) { return (v > best || v != v) ? v : best; }

// PyTorch's reflect padding of index i into [0, n), n >= 2: -1 -> 1, n -> n - 2 (the edge
// pixel is not repeated). Valid for i in [-(n - 1), 2n - 2].
ESR_HD int64_t reflect(int64_t i, int64_t n) {
  i = i < 0 ? -i : i;
  return i >= n ? 2 * n - 2 - i : i;
}

// Bilinear taps along one axis, align_corners=False, as ATen computes them for an output size:
// scale = in / out (float), src = max((dst + 0.5) * scale - 0.5, 0), i0 = floor(src) clamped
// to in - 1, i1 = min(i0 + 1, in - 1), weights l0 = 1 - l1, l1 = src - i0.
struct Taps {
  int64_t i0, i1;
  float l0, l1;
};

ESR_HD Taps bilinear_taps(int64_t dst, float scale, int64_t in_len) {
  float src = (static_cast<float>(dst) + 0.5f) * scale - 0.5f;
  src = src < 0.0f ? 0.0f : src;
  int64_t i0 = static_cast<int64_t>(src);
  i0 = i0 < in_len - 1 ? i0 : in_len - 1;
  const int64_t i1 = i0 + 1 < in_len - 1 ? i0 + 1 : in_len - 1;
  const float l1 = src - static_cast<float>(i0);
  return {i0, i1, 1.0f - l1, l1};
}

// Bilinear sample of one (h, w) row-major float plane at taps (ty, tx), in ATen's order.
ESR_HD float bilinear(const float* plane, int64_t w, const Taps& ty, const Taps& tx) {
  const float top = tx.l0 * plane[ty.i0 * w + tx.i0] + tx.l1 * plane[ty.i0 * w + tx.i1];
  const float bottom = tx.l0 * plane[ty.i1 * w + tx.i0] + tx.l1 * plane[ty.i1 * w + tx.i1];
  return ty.l0 * top + ty.l1 * bottom;
}

}  // namespace esr_maths
