// BSB as one pass: 1x1 pointwise (GEMM micro-kernel) + 3x3 depthwise with reflect padding +
// bias + GELU [+ residual]. The pointwise output never goes to memory: each thread keeps the
// three pointwise rows the depthwise needs in a small row cache (L2), so the only traffic is
// reading x once and writing the output once.
#include "activation_span.h"
#include "gemm.h"
#include "gemm_bf16.h"

ESR_CPU_NAMESPACE_BEGIN

#if defined(ESR_HAVE_CONV_ENGINE)

namespace {

// Pointwise rows of one image, cached by source row (4 slots: the 3 in use plus the next).
struct PointwiseRows {
  const float* X = nullptr;    // (H, W, C) of the current image (set by reset)
  const void* Wpw = nullptr;  // the packed pointwise weight: float32 (C, CP) or bf16 pairs
  bool bf16 = false;          // (ceil(C / 2), 2 CP) (gemm_bf16.h)
  const BrgemmWeights* brg = nullptr;  // ESR_CPU_GEMM=brgemm: the bf16 pointwise through brgemm
  int64_t W, C, CP;
  std::vector<float> rows;
  int64_t tag[4] = {-1, -1, -1, -1};
  std::vector<float> scratch;
  std::vector<uint16_t> a_bf16;

  PointwiseRows(int64_t w, int64_t c, int64_t cp) : W(w), C(c), CP(cp), rows(4 * w * c) {}

  void reset(const float* x) {
    X = x;
    for (auto& t : tag) t = -1;
  }

  // The pointwise output of source row r; `keep` rows must stay cached.
  const float* get(int64_t r, const int64_t keep[3]) {
    for (int s = 0; s < 4; ++s)
      if (tag[s] == r) return rows.data() + s * W * C;
    int slot = 0;
    for (; slot < 4; ++slot)
      if (tag[slot] != keep[0] && tag[slot] != keep[1] && tag[slot] != keep[2]) break;
    float* out = rows.data() + slot * W * C;
#if defined(ESR_HAVE_BF16_ENGINE)
    if (brg)
      brgemm_rows(*brg, 0, X + r * W * C, C, W, C, out, C, false, a_bf16);
    else if (bf16)
      gemm_bf16_rows(X + r * W * C, C, W, static_cast<const bf16_t*>(Wpw), 2 * CP, C, out, C, C, false, a_bf16,
                     scratch);
    else
#endif
      gemm_rows(X + r * W * C, C, W, static_cast<const float*>(Wpw), CP, C, out, C, C, false, scratch);
    tag[slot] = r;
    return out;
  }
};

}  // namespace

// x (N, C, H, W); pw (C, CP): the pointwise weight transposed, CP = C rounded up to 16 (zero
// columns), or its bf16 pairs (ceil(C / 2), 2 CP) for a bf16 pointwise GEMM; taps (9, L) and bias (L,): the depthwise taps and bias repeated with period C over
// L = lcm(C, 16), so that the interior of a row is one flat vector loop over (x, c)
// (esr_kernels/packing.py: pack_bsb_cpu). Returns GELU(dw(pw(x)) + bias) [+ residual], float32
// channels_last.
at::Tensor bsb_packed(const at::Tensor& x_in, const at::Tensor& pw_in, const at::Tensor& taps_in,
                      const at::Tensor& bias_in, const c10::optional<at::Tensor>& residual_in) {
  TORCH_CHECK(x_in.dim() == 4, "bsb: expected (N, C, H, W), got ", x_in.sizes());
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, "bsb: reflect padding needs H, W >= 2, got ", H, "x", W);
  const int64_t CP = (C + kLanes - 1) / kLanes * kLanes, L = taps_in.size(-1);
  const bool bf16 = pw_in.scalar_type() == at::kBFloat16;
#if !defined(ESR_HAVE_BF16_ENGINE)
  TORCH_CHECK(!bf16, "bsb_packed: bf16 weights need the avx512_bf16 ISA level (see `esr backends`)");
#endif
  const int64_t pw_rows = bf16 ? (C + 1) / 2 : C, pw_cols = bf16 ? 2 * CP : CP;
  TORCH_CHECK(pw_in.dim() == 2 && pw_in.size(0) == pw_rows && pw_in.size(1) == pw_cols && taps_in.dim() == 2 &&
                  taps_in.size(0) == 9 && L % C == 0 && L % kLanes == 0 && bias_in.numel() == L,
              "bsb_packed: packed weights do not match ", C, " channels");
  at::Tensor x = as_nhwc(x_in);
  at::Tensor wpw = bf16 ? pw_in.contiguous() : pw_in.to(at::kFloat).contiguous();
  at::Tensor taps = taps_in.to(at::kFloat).contiguous(),
             bias = bias_in.to(at::kFloat).contiguous();
  at::Tensor res;
  if (residual_in.has_value()) res = as_nhwc(*residual_in);
  at::Tensor out = empty_nhwc(N, C, H, W, x);
  const float* X = x.data_ptr<float>();
  const float* K = taps.data_ptr<float>();
  const float* B = bias.data_ptr<float>();
  const float* R = res.defined() ? res.data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();
  const int64_t row_len = W * C;

  const auto brg = make_brgemm(bf16, wpw, CP, C, {{0, (C + 1) / 2}});

  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    const BrgemmDone brgemm_done(brg != nullptr);
    PointwiseRows pw(W, C, CP);
    pw.Wpw = wpw.data_ptr();
    pw.bf16 = bf16;
    pw.brg = brg.get();
    int64_t image = -1;
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, y = row % H;
      if (n != image) {
        pw.reset(X + n * H * row_len);
        image = n;
      }
      const int64_t src[3] = {reflect(y - 1, H), y, reflect(y + 1, H)};
      const float* rows[3];
      for (int dy = 0; dy < 3; ++dy) rows[dy] = pw.get(src[dy], src);
      float* o = O + row * row_len;
      // Interior pixels 1..W-2: out[i] over the flat row, tap (dy, dx) at rows[dy][i + (dx-1) C].
      for (int64_t base = C; base < row_len - C; base += L) {
        const int64_t len = std::min(L, row_len - C - base);
        const float* r0 = rows[0] + base;
        const float* r1 = rows[1] + base;
        const float* r2 = rows[2] + base;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) {
          float acc = B[j];
          acc += K[0 * L + j] * r0[j - C] + K[1 * L + j] * r0[j] + K[2 * L + j] * r0[j + C];
          acc += K[3 * L + j] * r1[j - C] + K[4 * L + j] * r1[j] + K[5 * L + j] * r1[j + C];
          acc += K[6 * L + j] * r2[j - C] + K[7 * L + j] * r2[j] + K[8 * L + j] * r2[j + C];
          o[base + j] = acc;
        }
      }
      // Edge pixels: reflect x = -1 -> 1 and x = W -> W - 2.
      for (const int64_t xx : {int64_t{0}, W - 1}) {
        const int64_t xs[3] = {reflect(xx - 1, W), xx, reflect(xx + 1, W)};
        float* op = o + xx * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) op[c] = B[c];
        for (int dy = 0; dy < 3; ++dy)
          for (int dx = 0; dx < 3; ++dx) {
            const float* s = rows[dy] + xs[dx] * C;
            const float* k = K + (dy * 3 + dx) * L;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) op[c] += k[c] * s[c];
          }
      }
      activate_span<ACT_GELU>(o, R ? R + row * row_len : nullptr, row_len);
    }
  });
  return out;
}

#else

at::Tensor bsb_packed(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const c10::optional<at::Tensor>&) {
  TORCH_CHECK(false, "bsb_packed: no conv engine at the ISA level running (it needs AVX2; see `esr backends`)");
}

#endif  // ESR_HAVE_CONV_ENGINE

ESR_CPU_NAMESPACE_END
