// Device helpers shared by the .cu files: storage-type conversion, activations, bilinear taps.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.cuh"

namespace esr_cuda {

constexpr int kMaxC = 64;
constexpr int kMaxCR = 16;
constexpr int kPoolKernel = 7;
constexpr int kPoolStride = 3;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }
// erf form, as nn.GELU().
__device__ __forceinline__ float geluf(float x) { return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f)); }

__device__ __forceinline__ int64_t offset(const Strides4& s, int64_t n, int64_t c, int64_t y, int64_t x) {
  return n * s.n + c * s.c + y * s.h + x * s.w;
}

// PyTorch's reflect padding: -1 -> 1, n -> n - 2.
__device__ __forceinline__ int64_t reflect(int64_t i, int64_t n) {
  i = i < 0 ? -i : i;
  return i >= n ? 2 * n - 2 - i : i;
}

// align_corners=False: src = max((dst + 0.5) * in / out - 0.5, 0).
struct Taps {
  int64_t i0, i1;
  float l1;
};
__device__ __forceinline__ Taps bilinear_taps(int64_t dst, float scale, int64_t in_len) {
  const float src = fmaxf((static_cast<float>(dst) + 0.5f) * scale - 0.5f, 0.0f);
  const int64_t i0 = min(static_cast<int64_t>(src), in_len - 1);
  return {i0, min(i0 + 1, in_len - 1), src - static_cast<float>(i0)};
}

inline int blocks_for(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

// Calls fn(T{}) with the storage type of dtype.
template <typename Fn>
cudaError_t dispatch(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(float{}); break;
    case DType::kFloat16: fn(__half{}); break;
    case DType::kBFloat16: fn(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

}  // namespace esr_cuda
