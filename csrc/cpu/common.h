// Shared helpers of the CPU kernels. All kernels take float32 channels_last tensors (the
// Python side converts once) and accumulate in float32.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace esr_cpu {

// Activation codes: must match esr_kernels/spec.py.
enum Act : int64_t { ACT_NONE = 0, ACT_GELU = 1, ACT_SILU = 2, ACT_LEAKY = 3, ACT_SIGMOID = 4 };
enum Residual : int64_t { RES_NONE = 0, RES_TENSOR = 1, RES_GATED_INPUT = 2 };
enum Shortcut : int64_t { SHORTCUT_NONE = 0, SHORTCUT_REPEAT_INPUT = 1, SHORTCUT_VECTOR = 2 };
constexpr float kLeakySlope = 0.05f;

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }

// erf-form GELU, as nn.GELU().
inline float gelu(float x) { return 0.5f * x * (1.0f + std::erf(x * 0.70710678118654752f)); }

inline float activate(float x, int64_t act) {
  switch (act) {
    case ACT_GELU: return gelu(x);
    case ACT_SILU: return x * sigmoid(x);
    case ACT_LEAKY: return x >= 0.0f ? x : x * kLeakySlope;
    case ACT_SIGMOID: return sigmoid(x);
    default: return x;
  }
}

// PyTorch's reflect padding: -1 -> 1, n -> n - 2 (the edge itself is not repeated).
inline int64_t reflect(int64_t i, int64_t n) {
  if (i < 0) return -i;
  if (i >= n) return 2 * n - 2 - i;
  return i;
}

// Bilinear (align_corners=False) taps along one axis, as PyTorch computes them:
// src = max((dst + 0.5) * in / out - 0.5, 0).
struct Taps {
  int64_t i0, i1;
  float l0, l1;
};

inline Taps bilinear_taps(int64_t dst, float scale, int64_t in_len) {
  float src = std::max((static_cast<float>(dst) + 0.5f) * scale - 0.5f, 0.0f);
  int64_t i0 = std::min(static_cast<int64_t>(src), in_len - 1);
  int64_t i1 = std::min(i0 + 1, in_len - 1);
  float l1 = src - static_cast<float>(i0);
  return {i0, i1, 1.0f - l1, l1};
}

// A float32 channels_last view: element (n, c, y, x) at ((n * H + y) * W + x) * C + c.
inline at::Tensor as_nhwc(const at::Tensor& t) {
  return t.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
}

inline at::Tensor empty_nhwc(int64_t n, int64_t c, int64_t h, int64_t w, const at::Tensor& like) {
  return at::empty({n, c, h, w}, like.options().dtype(at::kFloat).memory_format(at::MemoryFormat::ChannelsLast));
}

}  // namespace esr_cpu
