// CUDA kernels of the fused ops: declarations of their launchers. The .cu files need only the
// CUDA runtime (so they compile, and CI compile-checks them, without a CUDA build of torch);
// bindings.cpp adapts them to torch tensors.
//
// Layout: every tensor is addressed through explicit (n, c, h, w) element strides, so NCHW and
// channels_last both work; offsets are int64. Maths in float32 whatever the storage type.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace esr_cuda {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

struct Strides4 {
  int64_t n, c, h, w;
};

// BSB: out = GELU(depthwise3x3_reflect(pointwise1x1(x)) + dw_bias) [+ residual].
// pw_weight (C, C) float32 row-major [out][in]; dw_weight (C, 9) float32; dw_bias (C) float32.
// C: one of csrc/common/channels.h (else cudaErrorInvalidValue). H, W >= 2.
cudaError_t launch_bsb(DType dtype, const void* x, Strides4 sx, const float* pw_weight,
                       const float* dw_weight, const float* dw_bias, const void* residual,
                       Strides4 sr, void* out, Strides4 so, int64_t N, int64_t C, int64_t H,
                       int64_t W, cudaStream_t stream);

// ESA full-resolution tail: out = x * sigmoid(expand(up(low) + skip(x))) [+ residual], where
// skip(x) = skip_w x + skip_b is the 1x1 branch folded with the reduction.
// low (N, CR, hp, wp) float32 contiguous; skip_w (CR, C); expand_w (C, CR); (C, CR): one of
// csrc/common/channels.h (else cudaErrorInvalidValue).
cudaError_t launch_esa_tail(DType dtype, const void* x, Strides4 sx, const float* low, int64_t hp,
                            int64_t wp, const float* skip_w, const float* skip_b,
                            const float* expand_w, const float* expand_b, const void* residual,
                            Strides4 sr, void* out, Strides4 so, int64_t N, int64_t C, int64_t CR,
                            int64_t H, int64_t W, cudaStream_t stream);

// LocalAttention reduction: out (N, CR, Hp, Wp) = max_pool kPoolKernel/kPoolStride (spec.h; no
// padding, floor) of the 1x1 conv reduce_w (CR, C) x + reduce_b. (C, CR): one of
// csrc/common/channels.h (else cudaErrorInvalidValue). H, W >= kPoolKernel.
cudaError_t launch_la_reduce(DType dtype, const void* x, Strides4 sx, const float* reduce_w,
                             const float* reduce_b, void* out, Strides4 so, int64_t N, int64_t C,
                             int64_t CR, int64_t H, int64_t W, cudaStream_t stream);

}  // namespace esr_cuda
