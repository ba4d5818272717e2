// LocalAttention: the reduction (1x1 conv fused with max-pool 7/3, one thread per pooled pixel,
// the reduced map never written) and the gate (x * bilinear_up(att) * sigmoid(x[:, 0])).
#include <cfloat>

#include "common.cuh"

namespace esr_cuda {

template <typename T>
__global__ void la_reduce_kernel(const T* __restrict__ x, Strides4 sx, const float* __restrict__ rw,
                                 const float* __restrict__ rb, T* __restrict__ out, Strides4 so,
                                 int64_t N, int C, int CR, int64_t H, int64_t W, int64_t Hp, int64_t Wp) {
  __shared__ float s_w[kMaxCR * kMaxC];
  for (int i = threadIdx.x; i < CR * C; i += blockDim.x) s_w[i] = rw[i];
  __syncthreads();
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= N * Hp * Wp) return;
  const int64_t n = pix / (Hp * Wp), py = (pix / Wp) % Hp, px = pix % Wp;
  float best[kMaxCR];
  for (int r = 0; r < CR; ++r) best[r] = -FLT_MAX;
  float in[kMaxC];
  for (int k = 0; k < kPoolKernel * kPoolKernel; ++k) {
    const int64_t iy = py * kPoolStride + k / kPoolKernel, ix = px * kPoolStride + k % kPoolKernel;
    for (int c = 0; c < C; ++c) in[c] = to_float(x[offset(sx, n, c, iy, ix)]);
    for (int r = 0; r < CR; ++r) {
      float v = 0.0f;
      for (int c = 0; c < C; ++c) v = fmaf(s_w[r * C + c], in[c], v);
      best[r] = fmaxf(best[r], v);
    }
  }
  // max(v) + b == max(v + b): rounding is monotonic, so the bias can come last.
  for (int r = 0; r < CR; ++r) out[offset(so, n, r, py, px)] = from_float<T>(best[r] + rb[r]);
}

template <typename T>
__global__ void gate_kernel(const T* __restrict__ x, Strides4 sx, const T* __restrict__ att, Strides4 sa,
                            int64_t ah, int64_t aw, float scale_h, float scale_w, T* __restrict__ out,
                            Strides4 so, int64_t N, int C, int64_t H, int64_t W) {
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= N * H * W) return;
  const int64_t n = pix / (H * W), y = (pix / W) % H, xx = pix % W;
  const Taps ty = bilinear_taps(y, scale_h, ah), tx = bilinear_taps(xx, scale_w, aw);
  const float g = sigmoidf(to_float(x[offset(sx, n, 0, y, xx)]));
  for (int c = 0; c < C; ++c) {
    const float a00 = to_float(att[offset(sa, n, c, ty.i0, tx.i0)]);
    const float a01 = to_float(att[offset(sa, n, c, ty.i0, tx.i1)]);
    const float a10 = to_float(att[offset(sa, n, c, ty.i1, tx.i0)]);
    const float a11 = to_float(att[offset(sa, n, c, ty.i1, tx.i1)]);
    const float up = (1.0f - ty.l1) * ((1.0f - tx.l1) * a00 + tx.l1 * a01) + ty.l1 * ((1.0f - tx.l1) * a10 + tx.l1 * a11);
    out[offset(so, n, c, y, xx)] = from_float<T>(to_float(x[offset(sx, n, c, y, xx)]) * up * g);
  }
}

cudaError_t launch_la_reduce(DType dtype, const void* x, Strides4 sx, const float* reduce_w,
                             const float* reduce_b, void* out, Strides4 so, int64_t N, int64_t C,
                             int64_t CR, int64_t H, int64_t W, cudaStream_t stream) {
  if (C > kMaxC || CR > kMaxCR || H < kPoolKernel || W < kPoolKernel) return cudaErrorInvalidValue;
  const int64_t Hp = (H - kPoolKernel) / kPoolStride + 1, Wp = (W - kPoolKernel) / kPoolStride + 1;
  constexpr int kThreads = 128;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    la_reduce_kernel<T><<<blocks_for(N * Hp * Wp, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(x), sx, reduce_w, reduce_b, static_cast<T*>(out), so, N,
        static_cast<int>(C), static_cast<int>(CR), H, W, Hp, Wp);
  });
}

cudaError_t launch_gate(DType dtype, const void* x, Strides4 sx, const void* att, Strides4 sa,
                        int64_t ah, int64_t aw, void* out, Strides4 so, int64_t N, int64_t C,
                        int64_t H, int64_t W, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const float scale_h = static_cast<float>(ah) / static_cast<float>(H);
  const float scale_w = static_cast<float>(aw) / static_cast<float>(W);
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    gate_kernel<T><<<blocks_for(N * H * W, kThreads), kThreads, 0, stream>>>(
        static_cast<const T*>(x), sx, static_cast<const T*>(att), sa, ah, aw, scale_h, scale_w,
        static_cast<T*>(out), so, N, static_cast<int>(C), H, W);
  });
}

}  // namespace esr_cuda
