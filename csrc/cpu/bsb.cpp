// BSB tail: 3x3 depthwise with reflect padding + bias + GELU [+ residual], over the
// pointwise output that oneDNN computed. One pass, channels vectorised.
#include "common.h"

ESR_CPU_NAMESPACE_BEGIN

// p (N, C, H, W) float32 channels_last; dw_weight (C, 1, 3, 3); dw_bias (C); residual like p.
at::Tensor bsb_dw(const at::Tensor& p_in, const at::Tensor& dw_weight, const at::Tensor& dw_bias,
                  const c10::optional<at::Tensor>& residual_in) {
  TORCH_CHECK(p_in.dim() == 4, "bsb_dw: expected (N, C, H, W), got ", p_in.sizes());
  const int64_t N = p_in.size(0), C = p_in.size(1), H = p_in.size(2), W = p_in.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, "bsb_dw: reflect padding needs H, W >= 2, got ", H, "x", W);
  at::Tensor p = as_nhwc(p_in);
  // (9, C): tap-major so that the inner loop over channels is contiguous.
  at::Tensor k = dw_weight.to(at::kFloat).reshape({C, 9}).t().contiguous();
  at::Tensor b = dw_bias.to(at::kFloat).contiguous();
  at::Tensor res;
  if (residual_in.has_value()) res = as_nhwc(*residual_in);
  at::Tensor out = empty_nhwc(N, C, H, W, p);
  const float* P = p.data_ptr<float>();
  const float* K = k.data_ptr<float>();
  const float* B = b.data_ptr<float>();
  const float* R = res.defined() ? res.data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();

  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, y = row % H;
      const float* rows[3];
      for (int dy = 0; dy < 3; ++dy) rows[dy] = P + ((n * H + reflect(y + dy - 1, H)) * W) * C;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t xs[3] = {reflect(x - 1, W), x, reflect(x + 1, W)};
        float* o = O + ((n * H + y) * W + x) * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = B[c];
        for (int dy = 0; dy < 3; ++dy) {
          for (int dx = 0; dx < 3; ++dx) {
            const float* src = rows[dy] + xs[dx] * C;
            const float* kk = K + (dy * 3 + dx) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) o[c] += src[c] * kk[c];
          }
        }
        const float* r = R ? R + ((n * H + y) * W + x) * C : nullptr;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = gelu(o[c]) + (r ? r[c] : 0.0f);
      }
    }
  });
  return out;
}

ESR_CPU_NAMESPACE_END
