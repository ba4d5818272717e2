// 1x1 convolution over the channel concatenation of several inputs, float32 channels_last,
// with the conv epilogue (epilogue.h) fused: one pass over each input, and the concatenation
// (IFADNet's 216-channel fusion input) is never materialised.
#include "epilogue.h"
#include "gemm.h"
#include "gemm_bf16.h"

ESR_CPU_NAMESPACE_BEGIN

#if defined(ESR_HAVE_CONV_ENGINE)

namespace {
constexpr int64_t kBlockPixels = 8 * kRows;  // pixels per work unit: output block stays in L1/L2
}

// The packed weight: float32 (sum C_i, CoutP), or bf16 pairs (sum ceil(C_i / 2), 2 CoutP) (each
// input's channels paired on their own: gemm_bf16.h's B layout). Returns (CoutP, whether bf16).
static std::pair<int64_t, bool> check_gemm_weight(const at::Tensor& w, const std::vector<at::Tensor>& xs,
                                                  int64_t c_conv, int64_t n_bias) {
  const bool bf16 = w.scalar_type() == at::kBFloat16;
#if !defined(ESR_HAVE_BF16_ENGINE)
  TORCH_CHECK(!bf16, "conv1x1: bf16 weights need the avx512_bf16 ISA level (see `esr backends`)");
#endif
  int64_t rows = 0;
  for (const at::Tensor& t : xs) rows += bf16 ? (t.size(1) + 1) / 2 : t.size(1);
  const int64_t CoutP = bf16 ? w.size(-1) / 2 : w.size(-1);
  TORCH_CHECK(w.dim() == 2 && w.size(0) == rows, "conv1x1: w must be (", rows, bf16 ? ", 2 CoutP)" : ", CoutP)",
              " for these inputs, got ", w.sizes());
  TORCH_CHECK(CoutP % kLanes == 0 && c_conv <= CoutP && CoutP < c_conv + kLanes && n_bias == CoutP,
              "conv1x1: bad packed output channels");
  return {CoutP, bf16};
}

// xs: tensors (N, C_i, H, W); w (check_gemm_weight) with CoutP = c_conv rounded up to 16 (zero
// columns); bias (CoutP,). y = sum_i x_i @ w[rows of x_i] goes through the epilogue with the
// remaining arguments. With bf16 w, each block of x_i is rounded to bf16 for the GEMM (float32
// accumulation); the epilogue stays float32.
at::Tensor conv1x1(at::TensorList xs_in, const at::Tensor& w_in, const at::Tensor& bias_in, int64_t c_conv,
                   int64_t act, const c10::optional<at::Tensor>& passthrough, int64_t c_out,
                   const c10::optional<at::Tensor>& residual, int64_t residual_mode,
                   const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& shortcut,
                   int64_t shortcut_mode, int64_t shuffle) {
  TORCH_CHECK(!xs_in.empty(), "conv1x1: no inputs");
  const int64_t N = xs_in[0].size(0), H = xs_in[0].size(2), W = xs_in[0].size(3);
  std::vector<at::Tensor> xs;
  for (const at::Tensor& t : xs_in) {
    TORCH_CHECK(t.dim() == 4 && t.size(0) == N && t.size(2) == H && t.size(3) == W,
                "conv1x1: inputs differ in N, H or W");
    xs.push_back(as_nhwc(t));
  }
  const auto [CoutP, bf16] = check_gemm_weight(w_in, xs, c_conv, bias_in.numel());
  std::vector<int64_t> w_row;  // each input's first row of w
  int64_t rows = 0;
  for (const at::Tensor& t : xs) {
    w_row.push_back(rows);
    rows += bf16 ? (t.size(1) + 1) / 2 : t.size(1);
  }
  at::Tensor w = bf16 ? w_in.contiguous() : w_in.to(at::kFloat).contiguous();
  at::Tensor bias = bias_in.to(at::kFloat).contiguous();
  const ConvEpilogue epi("conv1x1", N, c_conv, H, W, xs[0], passthrough, c_out, residual, residual_mode, att,
                         shortcut, shortcut_mode, shuffle);
  const int64_t P = N * H * W;
  // Columns of y computed: the conv's channels rounded up to 8 (the GEMM's last vector can be
  // half width); the epilogue reads c_conv of them.
  const int64_t n_cols = std::min(CoutP, (c_conv + 7) / 8 * 8);
  const float* B = bias.data_ptr<float>();

  dispatch_act(act, [&](auto act_c) {
    at::parallel_for(0, (P + kBlockPixels - 1) / kBlockPixels, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> gemm_scratch, ybuf(kBlockPixels * CoutP), scratch(epi.scratch_floats(kBlockPixels));
      std::vector<uint16_t> a_bf16;
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t p0 = blk * kBlockPixels, p1 = std::min(P, p0 + kBlockPixels);
        for (size_t i = 0; i < xs.size(); ++i) {
          const int64_t Ci = xs[i].size(1);
          const float* a = xs[i].data_ptr<float>() + p0 * Ci;
#if defined(ESR_HAVE_BF16_ENGINE)
          if (bf16) {
            gemm_bf16_rows(a, Ci, p1 - p0, static_cast<const bf16_t*>(w.data_ptr()) + w_row[i] * 2 * CoutP,
                           2 * CoutP, Ci, ybuf.data(), CoutP, n_cols, i > 0, a_bf16, gemm_scratch);
            continue;
          }
#endif
          gemm_rows(a, Ci, p1 - p0, w.data_ptr<float>() + w_row[i] * CoutP, CoutP, Ci, ybuf.data(), CoutP, n_cols,
                    i > 0, gemm_scratch);
        }
        epi.pixels<decltype(act_c)::value>(p0, p1, ybuf.data(), CoutP, B, scratch.data());
      }
    });
  });
  return epi.out();
}

#else

at::Tensor conv1x1(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                   const c10::optional<at::Tensor>&, int64_t, const c10::optional<at::Tensor>&, int64_t,
                   const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, int64_t, int64_t) {
  TORCH_CHECK(false, "conv1x1: no conv engine at the ISA level running (it needs AVX2; see `esr backends`)");
}

#endif

ESR_CPU_NAMESPACE_END
