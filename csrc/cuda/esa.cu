// ESA's full-resolution tail in one pass: per pixel, the folded 1x1 branch (C -> CR), the
// bilinear sample of the low-resolution map, the 1x1 expansion (CR -> C), sigmoid, the product
// with x and the block residual. Weights in shared memory.
#include "common.cuh"

namespace esr_cuda {

template <typename T>
__global__ void esa_tail_kernel(const T* __restrict__ x, Strides4 sx, const float* __restrict__ low,
                                int64_t hp, int64_t wp, float scale_h, float scale_w,
                                const float* __restrict__ skip_w, const float* __restrict__ skip_b,
                                const float* __restrict__ expand_w, const float* __restrict__ expand_b,
                                const T* __restrict__ res, Strides4 sr, T* __restrict__ out, Strides4 so,
                                int64_t N, int C, int CR, int64_t H, int64_t W) {
  __shared__ float s_skip[kMaxCR * kMaxC];
  __shared__ float s_expand[kMaxC * kMaxCR];
  __shared__ float s_sb[kMaxCR];
  __shared__ float s_eb[kMaxC];
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

  float xv[kMaxC];
  for (int c = 0; c < C; ++c) xv[c] = to_float(x[offset(sx, n, c, y, xx)]);
  const Taps ty = bilinear_taps(y, scale_h, hp), tx = bilinear_taps(xx, scale_w, wp);
  float u[kMaxCR];
  for (int r = 0; r < CR; ++r) {
    float t = s_sb[r];
    for (int c = 0; c < C; ++c) t = fmaf(s_skip[r * C + c], xv[c], t);
    const float* m = low + (n * CR + r) * hp * wp;
    const float top = (1.0f - tx.l1) * m[ty.i0 * wp + tx.i0] + tx.l1 * m[ty.i0 * wp + tx.i1];
    const float bottom = (1.0f - tx.l1) * m[ty.i1 * wp + tx.i0] + tx.l1 * m[ty.i1 * wp + tx.i1];
    u[r] = (1.0f - ty.l1) * top + ty.l1 * bottom + t;
  }
  for (int c = 0; c < C; ++c) {
    float s = s_eb[c];
    for (int r = 0; r < CR; ++r) s = fmaf(s_expand[c * CR + r], u[r], s);
    float v = xv[c] * sigmoidf(s);
    if (res != nullptr) v += to_float(res[offset(sr, n, c, y, xx)]);
    out[offset(so, n, c, y, xx)] = from_float<T>(v);
  }
}

cudaError_t launch_esa_tail(DType dtype, const void* x, Strides4 sx, const float* low, int64_t hp,
                            int64_t wp, const float* skip_w, const float* skip_b,
                            const float* expand_w, const float* expand_b, const void* residual,
                            Strides4 sr, void* out, Strides4 so, int64_t N, int64_t C, int64_t CR,
                            int64_t H, int64_t W, cudaStream_t stream) {
  if (C > kMaxC || CR > kMaxCR) return cudaErrorInvalidValue;
  constexpr int kThreads = 128;
  const float scale_h = static_cast<float>(hp) / static_cast<float>(H);
  const float scale_w = static_cast<float>(wp) / static_cast<float>(W);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    esa_tail_kernel<T><<<blocks_for(N * H * W, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(x), sx, low, hp, wp, scale_h, scale_w, skip_w, skip_b, expand_w,
        expand_b, static_cast<const T*>(residual), sr, static_cast<T*>(out), so, N,
        static_cast<int>(C), static_cast<int>(CR), H, W);
  });
}

}  // namespace esr_cuda
