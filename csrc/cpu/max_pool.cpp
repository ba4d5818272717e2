// Max pool kPoolKernel x kPoolKernel, stride kPoolStride (spec.h: 7, 3), no padding, floor
// mode (LocalAttention and ESA), float32 channels_last, without the indices that ATen's
// max_pool2d computes (~4x slower here). The op keeps its name, max_pool_7s3.
#include "common.h"

ESR_CPU_NAMESPACE_BEGIN

at::Tensor max_pool_7s3(const at::Tensor& x_in) {
  constexpr int64_t K = kPoolKernel, S = kPoolStride;
  TORCH_CHECK(x_in.dim() == 4, "max_pool_7s3: expected (N, C, H, W), got ", x_in.sizes());
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(H >= K && W >= K, "max_pool_7s3: input ", H, "x", W, " is smaller than the ", K, "x", K, " window");
  const int64_t Ho = pooled_size(H), Wo = pooled_size(W);
  at::Tensor x = as_nhwc(x_in);
  at::Tensor out = empty_nhwc(N, C, Ho, Wo, x);
  const float* X = x.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, N * Ho, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / Ho, oy = row % Ho;
      for (int64_t ox = 0; ox < Wo; ++ox) {
        float* o = O + (row * Wo + ox) * C;
        const float* first = X + ((n * H + oy * S) * W + ox * S) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = first[c];
        for (int64_t ky = 0; ky < K; ++ky)
          for (int64_t kx = 0; kx < K; ++kx) {
            const float* p = X + ((n * H + oy * S + ky) * W + ox * S + kx) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) o[c] = p[c] > o[c] ? p[c] : o[c];
          }
      }
    }
  });
  return out;
}

ESR_CPU_NAMESPACE_END
