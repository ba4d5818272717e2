// BSB in one kernel: 1x1 pointwise -> 3x3 depthwise (reflect) -> GELU [+ residual].
// One thread per output pixel and all channels (esr_pixel::bsb, csrc/common/pixel_ops.h): for
// each of the 9 reflected neighbours it recomputes the pointwise conv (C x C MACs) from
// register-resident input, so the pointwise output never goes to memory. Weights sit in shared
// memory. Instantiated per channel count (csrc/common/channels.h) so the arrays are registers.
#include "../common/channels.h"
#include "common.cuh"

namespace esr_cuda {

template <typename T, int C>
__global__ void bsb_kernel(const T* __restrict__ x, Strides4 sx, const float* __restrict__ pw,
                           const float* __restrict__ dw, const float* __restrict__ db,
                           const T* __restrict__ res, Strides4 sr, T* __restrict__ out, Strides4 so,
                           int64_t N, int64_t H, int64_t W) {
  __shared__ float s_pw[C * C];
  __shared__ float s_dw[C * 9];
  __shared__ float s_db[C];
  for (int i = threadIdx.x; i < C * C; i += blockDim.x) s_pw[i] = pw[i];
  for (int i = threadIdx.x; i < C * 9; i += blockDim.x) s_dw[i] = dw[i];
  for (int i = threadIdx.x; i < C; i += blockDim.x) s_db[i] = db[i];
  __syncthreads();

  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= N * H * W) return;
  const int64_t n = pix / (H * W), y = (pix / W) % H, xx = pix % W;
  const auto load = [&](int c, int64_t iy, int64_t ix) { return to_float(x[offset(sx, n, c, iy, ix)]); };
  const auto store = [&](int c, float v) {
    if (res != nullptr) v += to_float(res[offset(sr, n, c, y, xx)]);
    out[offset(so, n, c, y, xx)] = from_float<T>(v);
  };
  esr_pixel::bsb<C>(load, s_pw, s_dw, s_db, y, xx, H, W, store);
}

cudaError_t launch_bsb(DType dtype, const void* x, Strides4 sx, const float* pw_weight,
                       const float* dw_weight, const float* dw_bias, const void* residual,
                       Strides4 sr, void* out, Strides4 so, int64_t N, int64_t C, int64_t H,
                       int64_t W, cudaStream_t stream) {
  if (H < 2 || W < 2) return cudaErrorInvalidValue;
  if (N * H * W == 0) return cudaSuccess;
  constexpr int kThreads = 128;
  bool launched = false;
  esr_channels::bsb(C, [&](auto c) {
    constexpr int kC = decltype(c)::value;
    launched = dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      bsb_kernel<T, kC><<<blocks_for(N * H * W, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(x), sx, pw_weight, dw_weight, dw_bias, static_cast<const T*>(residual), sr,
          static_cast<T*>(out), so, N, H, W);
    });
  });
  return launch_status(launched);
}

}  // namespace esr_cuda
