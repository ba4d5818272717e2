// BSB in one kernel: 1x1 pointwise -> 3x3 depthwise (reflect) -> GELU [+ residual].
// One thread per output pixel and all channels: for each of the 9 reflected neighbours it
// recomputes the pointwise conv (C x C MACs) from registers-resident input and accumulates the
// depthwise product, so the pointwise output never goes to memory. Weights sit in shared memory.
#include "common.cuh"

namespace esr_cuda {

template <typename T>
__global__ void bsb_kernel(const T* __restrict__ x, Strides4 sx, const float* __restrict__ pw,
                           const float* __restrict__ dw, const float* __restrict__ db,
                           const T* __restrict__ res, Strides4 sr, T* __restrict__ out, Strides4 so,
                           int64_t N, int C, int64_t H, int64_t W) {
  __shared__ float s_pw[kMaxC * kMaxC];
  __shared__ float s_dw[kMaxC * 9];
  __shared__ float s_db[kMaxC];
  for (int i = threadIdx.x; i < C * C; i += blockDim.x) s_pw[i] = pw[i];
  for (int i = threadIdx.x; i < C * 9; i += blockDim.x) s_dw[i] = dw[i];
  for (int i = threadIdx.x; i < C; i += blockDim.x) s_db[i] = db[i];
  __syncthreads();

  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= N * H * W) return;
  const int64_t n = pix / (H * W), y = (pix / W) % H, xx = pix % W;

  float acc[kMaxC];
  for (int c = 0; c < C; ++c) acc[c] = s_db[c];
  float in[kMaxC];
  for (int tap = 0; tap < 9; ++tap) {
    const int64_t iy = reflect(y + tap / 3 - 1, H), ix = reflect(xx + tap % 3 - 1, W);
    for (int c = 0; c < C; ++c) in[c] = to_float(x[offset(sx, n, c, iy, ix)]);
    for (int co = 0; co < C; ++co) {
      float p = 0.0f;
      for (int ci = 0; ci < C; ++ci) p = fmaf(s_pw[co * C + ci], in[ci], p);
      acc[co] = fmaf(p, s_dw[co * 9 + tap], acc[co]);
    }
  }
  for (int c = 0; c < C; ++c) {
    float v = geluf(acc[c]);
    if (res != nullptr) v += to_float(res[offset(sr, n, c, y, xx)]);
    out[offset(so, n, c, y, xx)] = from_float<T>(v);
  }
}

cudaError_t launch_bsb(DType dtype, const void* x, Strides4 sx, const float* pw_weight,
                       const float* dw_weight, const float* dw_bias, const void* residual,
                       Strides4 sr, void* out, Strides4 so, int64_t N, int64_t C, int64_t H,
                       int64_t W, cudaStream_t stream) {
  if (C > kMaxC || H < 2 || W < 2) return cudaErrorInvalidValue;
  constexpr int kThreads = 128;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    bsb_kernel<T><<<blocks_for(N * H * W, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(x), sx, pw_weight, dw_weight, dw_bias, static_cast<const T*>(residual),
        sr, static_cast<T*>(out), so, N, static_cast<int>(C), H, W);
  });
}

}  // namespace esr_cuda
