// ESA's full-resolution tail in one pass (esr_pixel::esa_tail, csrc/common/pixel_ops.h): per
// pixel, the folded 1x1 branch (C -> CR), the bilinear sample of the low-resolution map, the
// 1x1 expansion (CR -> C), sigmoid, the product with x and the block residual. Weights in
// shared memory; instantiated per (C, CR) (csrc/common/channels.h) so the arrays are registers.
#include "../common/channels.h"
#include "common.cuh"

namespace esr_cuda {

template <typename T, int C, int CR>
__global__ void esa_tail_kernel(const T* __restrict__ x, Strides4 sx, const float* __restrict__ low,
                                int64_t hp, int64_t wp, float scale_h, float scale_w,
                                const float* __restrict__ skip_w, const float* __restrict__ skip_b,
                                const float* __restrict__ expand_w, const float* __restrict__ expand_b,
                                const T* __restrict__ res, Strides4 sr, T* __restrict__ out, Strides4 so,
                                int64_t N, int64_t H, int64_t W) {
  __shared__ float s_skip[CR * C];
  __shared__ float s_expand[C * CR];
  __shared__ float s_sb[CR];
  __shared__ float s_eb[C];
  for (int i = threadIdx.x; i < CR * C; i += blockDim.x) {
    s_skip[i] = skip_w[i];
    s_expand[i] = expand_w[i];
  }
  for (int i = threadIdx.x; i < CR; i += blockDim.x) s_sb[i] = skip_b[i];
  for (int i = threadIdx.x; i < C; i += blockDim.x) s_eb[i] = expand_b[i];
  __syncthreads();

  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= N * H * W) return;
  const int64_t n = pix / (H * W), y = (pix / W) % H, xx = pix % W;
  const auto load = [&](int c) { return to_float(x[offset(sx, n, c, y, xx)]); };
  const auto store = [&](int c, float v) {
    if (res != nullptr) v += to_float(res[offset(sr, n, c, y, xx)]);
    out[offset(so, n, c, y, xx)] = from_float<T>(v);
  };
  esr_pixel::esa_tail<C, CR>(load, low + n * CR * hp * wp, hp, wp, esr_maths::bilinear_taps(y, scale_h, hp),
                             esr_maths::bilinear_taps(xx, scale_w, wp), s_skip, s_sb, s_expand, s_eb, store);
}

cudaError_t launch_esa_tail(DType dtype, const void* x, Strides4 sx, const float* low, int64_t hp,
                            int64_t wp, const float* skip_w, const float* skip_b,
                            const float* expand_w, const float* expand_b, const void* residual,
                            Strides4 sr, void* out, Strides4 so, int64_t N, int64_t C, int64_t CR,
                            int64_t H, int64_t W, cudaStream_t stream) {
  if (hp < 1 || wp < 1) return cudaErrorInvalidValue;
  if (N * H * W == 0) return cudaSuccess;
  constexpr int kThreads = 128;
  // ATen's scale for an output size: in / out.
  const float scale_h = static_cast<float>(hp) / static_cast<float>(H);
  const float scale_w = static_cast<float>(wp) / static_cast<float>(W);
  bool launched = false;
  esr_channels::esa(C, CR, [&](auto c, auto cr) {
    constexpr int kC = decltype(c)::value, kCR = decltype(cr)::value;
    launched = dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      esa_tail_kernel<T, kC, kCR><<<blocks_for(N * H * W, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(x), sx, low, hp, wp, scale_h, scale_w, skip_w, skip_b, expand_w, expand_b,
          static_cast<const T*>(residual), sr, static_cast<T*>(out), so, N, H, W);
    });
  });
  return launch_status(launched);
}

}  // namespace esr_cuda
