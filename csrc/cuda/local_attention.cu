// LocalAttention's reduction: the 1x1 conv fused with the max-pool (kPoolKernel/kPoolStride,
// no padding), one thread per pooled pixel (esr_pixel::la_reduce, csrc/common/pixel_ops.h); the
// reduced map is never written. Instantiated per (C, CR) (csrc/common/channels.h).
// (The gate x * up(att) * sigmoid(x[:, 0]) runs fused into the Triton conv that follows it.)
#include "../common/channels.h"
#include "common.cuh"

namespace esr_cuda {

template <typename T, int C, int CR>
__global__ void la_reduce_kernel(const T* __restrict__ x, Strides4 sx, const float* __restrict__ rw,
                                 const float* __restrict__ rb, T* __restrict__ out, Strides4 so,
                                 int64_t N, int64_t Hp, int64_t Wp) {
  __shared__ float s_w[CR * C];
  __shared__ float s_b[CR];
  for (int i = threadIdx.x; i < CR * C; i += blockDim.x) s_w[i] = rw[i];
  for (int i = threadIdx.x; i < CR; i += blockDim.x) s_b[i] = rb[i];
  __syncthreads();
  const int64_t pix = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (pix >= N * Hp * Wp) return;
  const int64_t n = pix / (Hp * Wp), py = (pix / Wp) % Hp, px = pix % Wp;
  const auto load = [&](int c, int64_t iy, int64_t ix) { return to_float(x[offset(sx, n, c, iy, ix)]); };
  const auto store = [&](int r, float v) { out[offset(so, n, r, py, px)] = from_float<T>(v); };
  esr_pixel::la_reduce<C, CR>(load, s_w, s_b, py, px, store);
}

cudaError_t launch_la_reduce(DType dtype, const void* x, Strides4 sx, const float* reduce_w,
                             const float* reduce_b, void* out, Strides4 so, int64_t N, int64_t C,
                             int64_t CR, int64_t H, int64_t W, cudaStream_t stream) {
  if (H < esr_spec::kPoolKernel || W < esr_spec::kPoolKernel) return cudaErrorInvalidValue;
  const int64_t Hp = esr_spec::pooled_size(H), Wp = esr_spec::pooled_size(W);
  if (N * Hp * Wp == 0) return cudaSuccess;
  constexpr int kThreads = 128;
  bool launched = false;
  esr_channels::la(C, CR, [&](auto c, auto cr) {
    constexpr int kC = decltype(c)::value, kCR = decltype(cr)::value;
    launched = dispatch_dtype(dtype, [&](auto tag) {
      using T = decltype(tag);
      la_reduce_kernel<T, kC, kCR><<<blocks_for(N * Hp * Wp, kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(x), sx, reduce_w, reduce_b, static_cast<T*>(out), so, N, Hp, Wp);
    });
  });
  return launch_status(launched);
}

}  // namespace esr_cuda
