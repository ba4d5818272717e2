// The conv engine's GEMM-shaped convolutions, float32 channels_last, each a GEMM per block of
// pixels with its epilogue fused while the block is in cache:
// - conv1x1: a 1x1 convolution over the channel concatenation of several inputs (one pass over
//   each; IFADNet's 216-channel fusion input is never materialised), with the conv epilogue
//   (epilogue.h);
// - esa_gate_1x1: ESA's output, its full-resolution 1x1 branch and the gate in one pass;
// - conv3x3_im2col: a 3x3 convolution over im2col rows (RGB heads, strided convs).
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

  std::vector<std::pair<int64_t, int64_t>> mats;  // each input's rows of w
  for (size_t i = 0; i < xs.size(); ++i) mats.emplace_back(w_row[i] * 2 * CoutP, (xs[i].size(1) + 1) / 2);
  const auto brg = make_brgemm(bf16, w, CoutP, n_cols, std::move(mats));

  dispatch_act(act, [&](auto act_c) {
    at::parallel_for(0, (P + kBlockPixels - 1) / kBlockPixels, 1, [&](int64_t begin, int64_t end) {
      const BrgemmDone brgemm_done(brg != nullptr);
      std::vector<float> gemm_scratch, ybuf(kBlockPixels * CoutP), scratch(epi.scratch_floats(kBlockPixels));
      std::vector<uint16_t> a_bf16;
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t p0 = blk * kBlockPixels, p1 = std::min(P, p0 + kBlockPixels);
        if (blk + 1 < end) {  // the next block's pixels, while this one's GEMM runs
          const int64_t q1 = std::min(P, p1 + kBlockPixels);
          for (const at::Tensor& t : xs)
            prefetch_span(t.data_ptr<float>() + p1 * t.size(1), (q1 - p1) * t.size(1) * sizeof(float));
          epi.prefetch(p1, q1);
        }
        for (size_t i = 0; i < xs.size(); ++i) {
          const int64_t Ci = xs[i].size(1);
          const float* a = xs[i].data_ptr<float>() + p0 * Ci;
#if defined(ESR_HAVE_BF16_ENGINE)
          if (brg) {
            brgemm_rows(*brg, i, a, Ci, p1 - p0, Ci, ybuf.data(), CoutP, i > 0, a_bf16);
            continue;
          }
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

// ESA's output with its folded full-resolution branch fused (cpu_backend.py's module docstring):
// out = x * sigmoid(x @ w + bias + up(low)) (+ residual), for x (N, C, H, W), w and bias as
// conv1x1's for one input of C channels (float32, or bf16 pairs; CP = C rounded up to 16
// columns), low (N, C, lh, lw) the expanded low-resolution logits. The same values as conv1x1
// then esa_tail, without the logits' round trip through memory and the second read of x: per
// block of pixels, the GEMM, then the logits and the gate while the block is in cache.
// input_conv: ESA runs on a 1x1 conv of the input (RLFN's block tail), which is never stored:
// w holds two GEMMs side by side, 2 CP columns, [that conv | the gate logits' 1x1 folded
// through it], bias their 2 CP biases; then x = the first GEMM + its bias.
at::Tensor esa_gate_1x1(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in,
                        const at::Tensor& low_in, const c10::optional<at::Tensor>& residual_in, bool input_conv) {
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  at::Tensor x = as_nhwc(x_in), low = as_nhwc(low_in), res;
  const bool bf16 = w_in.scalar_type() == at::kBFloat16;
#if !defined(ESR_HAVE_BF16_ENGINE)
  TORCH_CHECK(!bf16, "esa_gate_1x1: bf16 weights need the avx512_bf16 ISA level (see `esr backends`)");
#endif
  const int64_t CP = (C + kLanes - 1) / kLanes * kLanes, cols = input_conv ? 2 * CP : CP;
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(0) == (bf16 ? (C + 1) / 2 : C) && w_in.size(1) == (bf16 ? 2 : 1) * cols &&
                  bias_in.numel() == cols,
              "esa_gate_1x1: w must be (", bf16 ? (C + 1) / 2 : C, ", ", (bf16 ? 2 : 1) * cols, ") and bias (", cols,
              ",) for ", C, " channels", input_conv ? " and an input conv" : "", ", got ", w_in.sizes());
  TORCH_CHECK(low.size(0) == N && low.size(1) == C, "esa_gate_1x1: low must be (N, C, h, w)");
  if (residual_in.has_value()) {
    TORCH_CHECK(residual_in->sizes() == x_in.sizes(), "esa_gate_1x1: residual must be shaped as x");
    res = as_nhwc(*residual_in);
  }
  at::Tensor w = bf16 ? w_in.contiguous() : w_in.to(at::kFloat).contiguous();
  at::Tensor bias = bias_in.to(at::kFloat).contiguous();
  at::Tensor out = empty_nhwc(N, C, H, W, x);
  const int64_t lh = low.size(2), lw = low.size(3), P = N * H * W;
  const int64_t n_cols = input_conv ? cols : std::min(CP, (C + 7) / 8 * 8), lg = input_conv ? CP : 0;
  const float sh = static_cast<float>(lh) / H, sw = static_cast<float>(lw) / W;
  std::vector<Taps> tx(W);
  for (int64_t xx = 0; xx < W; ++xx) tx[xx] = bilinear_taps(xx, sw, lw);
  const float *X = x.data_ptr<float>(), *L = low.data_ptr<float>(), *B = bias.data_ptr<float>();
  const float* R = res.defined() ? res.data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();
  const auto brg = make_brgemm(bf16, w, cols, n_cols, {{0, (C + 1) / 2}});
  at::parallel_for(0, (P + kBlockPixels - 1) / kBlockPixels, 1, [&](int64_t begin, int64_t end) {
    const BrgemmDone brgemm_done(brg != nullptr);
    std::vector<float> gemm_scratch, ybuf(kBlockPixels * cols), xbuf(input_conv ? kBlockPixels * C : 0);
    std::vector<uint16_t> a_bf16;
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t p0 = blk * kBlockPixels, p1 = std::min(P, p0 + kBlockPixels);
      if (blk + 1 < end) {  // the next block's pixels, while this one's GEMM runs
        const int64_t q1 = std::min(P, p1 + kBlockPixels);
        prefetch_span(X + p1 * C, (q1 - p1) * C * sizeof(float));
        prefetch_span(O + p1 * C, (q1 - p1) * C * sizeof(float), true);
        if (R) prefetch_span(R + p1 * C, (q1 - p1) * C * sizeof(float));
      }
#if defined(ESR_HAVE_BF16_ENGINE)
      if (brg)
        brgemm_rows(*brg, 0, X + p0 * C, C, p1 - p0, C, ybuf.data(), cols, false, a_bf16);
      else if (bf16)
        gemm_bf16_rows(X + p0 * C, C, p1 - p0, static_cast<const bf16_t*>(w.data_ptr()), 2 * cols, C, ybuf.data(),
                       cols, n_cols, false, a_bf16, gemm_scratch);
      else
#endif
        gemm_rows(X + p0 * C, C, p1 - p0, w.data_ptr<float>(), cols, C, ybuf.data(), cols, n_cols, false,
                  gemm_scratch);
      for (int64_t p = p0; p < p1; ++p) {  // the logits, in esa_tail's order: (y + bias) + up(low)
        const int64_t n = p / (H * W), yy = p / W % H;
        const Taps ty = bilinear_taps(yy, sh, lh), t = tx[p % W];
        const float* r0 = L + (n * lh + ty.i0) * lw * C;
        const float* r1 = L + (n * lh + ty.i1) * lw * C;
        const float *a00 = r0 + t.i0 * C, *a01 = r0 + t.i1 * C, *a10 = r1 + t.i0 * C, *a11 = r1 + t.i1 * C;
        const float* y = ybuf.data() + (p - p0) * cols;
        float* o = O + p * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          o[c] = (y[lg + c] + B[lg + c]) +
                 (ty.l0 * (t.l0 * a00[c] + t.l1 * a01[c]) + ty.l1 * (t.l0 * a10[c] + t.l1 * a11[c]));
        if (input_conv) {
          float* xp = xbuf.data() + (p - p0) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) xp[c] = y[c] + B[c];
        }
      }
      sigmoid_gate_span(O + p0 * C, input_conv ? xbuf.data() : X + p0 * C, R ? R + p0 * C : nullptr, (p1 - p0) * C);
    }
  });
  return out;
}

// Where im2col reads: input H x W, output Ho x Wo, stride, zero padding.
struct Im2colGeometry {
  int64_t H, W, Ho, Wo, stride, pad;
};

// im2col rows of output pixels [p0, p1) for a 3x3 conv: row i holds, for (ky, kx) in row-major
// order, the C_in values of input pixel (oy s + ky - pad, ox s + kx - pad) (zero outside).
static void im2col_3x3(const float* X, const Im2colGeometry& g, int64_t Cin, int64_t p0, int64_t p1, float* a) {
  const int64_t K = 9 * Cin;
  for (int64_t p = p0; p < p1; ++p) {
    const int64_t n = p / (g.Ho * g.Wo), oy = p / g.Wo % g.Ho, ox = p % g.Wo;
    const int64_t x0 = ox * g.stride - g.pad;  // the first input column
    // Input columns x0 .. x0 + 2 are adjacent: one run of 3 C_in floats, less what lies outside.
    // (Plain loops: a memcpy call per few floats measured slower than the GEMM.)
    const int64_t k0 = std::max<int64_t>(0, -x0) * Cin, k1 = std::min<int64_t>(3, g.W - x0) * Cin;
    float* row = a + (p - p0) * K;
    for (int64_t ky = 0; ky < 3; ++ky) {
      const int64_t iy = oy * g.stride + ky - g.pad;
      float* dst = row + ky * 3 * Cin;
      if (iy < 0 || iy >= g.H) {
        for (int64_t k = 0; k < 3 * Cin; ++k) dst[k] = 0.0f;
        continue;
      }
      const float* src = X + ((n * g.H + iy) * g.W + x0) * Cin;  // (read only from k0 on)
      for (int64_t k = 0; k < k0; ++k) dst[k] = 0.0f;
      for (int64_t k = k0; k < k1; ++k) dst[k] = src[k];
      for (int64_t k = k1; k < 3 * Cin; ++k) dst[k] = 0.0f;
    }
  }
}

// Dense 3x3 conv (any stride, zero padding) as one GEMM per block of output pixels over their
// im2col rows, built in cache: float32, w (9 C_in, CoutP) with rows in im2col's order
// (esr_kernels.packing.pack_im2col_3x3), bias (CoutP,), then the conv epilogue (epilogue.h)
// with the remaining arguments. For what Winograd does not serve: inputs of a few channels
// (the RGB heads, whose Winograd transforms would cost as much as 3 channels of GEMM; oneDNN's
// direct conv measured 2.5-4.6 ms for the 3 -> 48 head at 256x256, 2 threads, this 1.9) and
// the stride-2 convs of the attention branches. bf16 taps (3, 9 ceil(C_in / 2), 2 CoutP) instead
// run the direct bf16 conv (direct_bf16.cpp: the bf16 models' 3x3 convs where the GEMMs are on
// AMX tiles).
at::Tensor conv3x3_im2col(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in, int64_t stride,
                          int64_t padding, int64_t c_conv, int64_t act, const c10::optional<at::Tensor>& passthrough,
                          int64_t c_out, const c10::optional<at::Tensor>& residual, int64_t residual_mode,
                          const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& shortcut,
                          int64_t shortcut_mode, int64_t shuffle) {
  const int64_t N = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3), K = 9 * Cin;
  TORCH_CHECK(stride >= 1 && padding >= 0 && H + 2 * padding >= 3 && W + 2 * padding >= 3,
              "conv3x3_im2col: bad stride or padding for a ", H, "x", W, " input");
  if (w_in.scalar_type() == at::kBFloat16) {
#if defined(ESR_HAVE_BF16_ENGINE)
    return conv3x3_direct_bf16(x_in, w_in, bias_in, stride, padding, c_conv, act, passthrough, c_out, residual,
                               residual_mode, att, shortcut, shortcut_mode, shuffle);
#else
    TORCH_CHECK(false, "conv3x3_im2col: bf16 weights need the avx512_bf16 ISA level (see `esr backends`)");
#endif
  }
  const Im2colGeometry g{H, W, (H + 2 * padding - 3) / stride + 1, (W + 2 * padding - 3) / stride + 1, stride, padding};
  at::Tensor x = as_nhwc(x_in);
  TORCH_CHECK(w_in.dim() == 2 && w_in.size(0) == K && w_in.scalar_type() == at::kFloat,
              "conv3x3_im2col: w must be float32 (9 C_in, CoutP) = (", K, ", CoutP), got ", w_in.sizes());
  const int64_t CoutP = w_in.size(1);
  TORCH_CHECK(CoutP % kLanes == 0 && c_conv <= CoutP && CoutP < c_conv + kLanes && bias_in.numel() == CoutP,
              "conv3x3_im2col: bad packed output channels");
  at::Tensor w = w_in.contiguous(), bias = bias_in.to(at::kFloat).contiguous();
  const ConvEpilogue epi("conv3x3_im2col", N, c_conv, g.Ho, g.Wo, x, passthrough, c_out, residual, residual_mode,
                         att, shortcut, shortcut_mode, shuffle);
  const int64_t P = N * g.Ho * g.Wo, n_cols = std::min(CoutP, (c_conv + 7) / 8 * 8);
  const float *X = x.data_ptr<float>(), *Wt = w.data_ptr<float>(), *B = bias.data_ptr<float>();
  dispatch_act(act, [&](auto act_c) {
    at::parallel_for(0, (P + kBlockPixels - 1) / kBlockPixels, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> a(kBlockPixels * K), gemm_scratch, ybuf(kBlockPixels * CoutP),
          scratch(epi.scratch_floats(kBlockPixels));
      for (int64_t blk = begin; blk < end; ++blk) {
        const int64_t p0 = blk * kBlockPixels, p1 = std::min(P, p0 + kBlockPixels);
        im2col_3x3(X, g, Cin, p0, p1, a.data());
        gemm_rows(a.data(), K, p1 - p0, Wt, CoutP, K, ybuf.data(), CoutP, n_cols, false, gemm_scratch);
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

at::Tensor esa_gate_1x1(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const c10::optional<at::Tensor>&, bool) {
  TORCH_CHECK(false, "esa_gate_1x1: no conv engine at the ISA level running (it needs AVX2; see `esr backends`)");
}

at::Tensor conv3x3_im2col(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t,
                          int64_t, const c10::optional<at::Tensor>&, int64_t, const c10::optional<at::Tensor>&, int64_t,
                          const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, int64_t, int64_t) {
  TORCH_CHECK(false, "conv3x3_im2col: no conv engine at the ISA level running (it needs AVX2; see `esr backends`)");
}

#endif

ESR_CPU_NAMESPACE_END
