// Device helpers shared by the .cu files: storage-type conversion, strided addressing, the
// dtype dispatch. The maths (activations, reflect, bilinear taps, per-pixel bodies) lives in
// csrc/common (host and device), so the CPU extension runs the same lines.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "../common/pixel_ops.h"
#include "kernels.cuh"

namespace esr_cuda {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_float(float v);
template <> __device__ __forceinline__ float from_float<float>(float v) { return v; }
template <> __device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ int64_t offset(const Strides4& s, int64_t n, int64_t c, int64_t y, int64_t x) {
  return n * s.n + c * s.c + y * s.h + x * s.w;
}

inline int blocks_for(int64_t n, int threads) { return static_cast<int>((n + threads - 1) / threads); }

// Calls fn(T{}) with the storage type of dtype; false for an unknown dtype.
template <typename Fn>
bool dispatch_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kFloat32: fn(float{}); return true;
    case DType::kFloat16: fn(__half{}); return true;
    case DType::kBFloat16: fn(__nv_bfloat16{}); return true;
  }
  return false;
}

// The launch's status: an unsupported dtype or channel count is cudaErrorInvalidValue (the
// torch bindings check both first, with a message naming what is supported).
inline cudaError_t launch_status(bool launched) {
  return launched ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace esr_cuda
