// Dense 3x3 convolution in bfloat16 as an implicit GEMM, for AMX tiles (issue 29).
//
// Why not Winograd there: on an AMX Xeon oneDNN's brgemm runs the GEMMs so fast that
// Winograd's float32 transforms become the cost (48 channels at 256x256, 2 threads: our bf16
// Winograd through brgemm ~3.4 ms, oneDNN's direct bf16 conv 1.5 ms). Here each input row is
// rounded to bf16 once, into a thread's zero-bordered rows (Bf16Rows), and each output segment
// is the sum over the 3 kernel rows of (its input pixels, with their 2 right neighbours) @ (the
// row's 3 taps): 3 GEMMs whose A rows are read in place from those rows (row stride = conv
// stride x pixel stride), accumulated in float32, then the conv epilogue (epilogue.h). Products of
// bf16-rounded inputs and weights, summed in float32: the rounding of a bf16 direct convolution
// (oneDNN's, autocast's).
#include "epilogue.h"
#include "gemm.h"
#include "gemm_bf16.h"

ESR_CPU_NAMESPACE_BEGIN

#if defined(ESR_HAVE_BF16_ENGINE)

namespace {

constexpr int64_t kDirectPixels = 32 * kRows;  // output pixels per GEMM (a 256-pixel row in one)

// x's input rows in bf16, for one thread: padded row yp of image n (input row yp - pad; a zero
// border of `pad` pixels; the odd channel zero) converted when first asked for and kept in slot
// yp % 3. A GEMM reads 3 consecutive padded rows (distinct slots), and a thread's units are
// consecutive output rows, so each input row is converted about once and read from cache: no
// bf16 copy of the whole image goes through memory. Each slot ends in zeros (`slack_pixels`):
// the own micro-kernel's 8-row blocks may read past a segment's last pixel.
class Bf16Rows {
 public:
  Bf16Rows(const float* X, int64_t ldx, int64_t H, int64_t W, int64_t C, int64_t pad, int64_t slack_pixels)
      : X_(X), ldx_(ldx), H_(H), W_(W), C_(C), pad_(pad), Cp_(2 * ((C + 1) / 2)),
        slot_(((W + 2 * pad) + slack_pixels) * Cp_), data_(3 * slot_, bf16_t{0}) {}

  int64_t pixel() const { return Cp_; }  // bf16 per pixel

  const bf16_t* row(int64_t n, int64_t yp) {
    const int64_t s = yp % 3;
    bf16_t* d = data_.data() + s * slot_;
    if (tag_[s] == std::make_pair(n, yp)) return d;
    tag_[s] = {n, yp};
    const int64_t y = yp - pad_, body = (W_ + 2 * pad_) * Cp_;
    if (y < 0 || y >= H_) {
      std::fill(d, d + body, bf16_t{0});
      return d;
    }
    const float* src = X_ + (n * H_ + y) * W_ * ldx_;
    std::fill(d, d + pad_ * Cp_, bf16_t{0});
    if (ldx_ == C_ && C_ == Cp_)  // the row's pixels are one contiguous run on both sides
      rows_to_bf16(src, 0, 1, W_ * C_, d + pad_ * Cp_, 0);
    else
      rows_to_bf16(src, ldx_, W_, C_, d + pad_ * Cp_, Cp_);
    std::fill(d + (pad_ + W_) * Cp_, d + body, bf16_t{0});
    return d;
  }

 private:
  const float* X_;
  int64_t ldx_, H_, W_, C_, pad_, Cp_, slot_;
  std::vector<bf16_t> data_;
  std::pair<int64_t, int64_t> tag_[3] = {{-1, -1}, {-1, -1}, {-1, -1}};
};

// C[M x n_cols] = sum over the kernel rows ky of A_ky @ W_ky. A_ky's row i is the 3 padded pixels
// (kx = 0, 1, 2) from rows[ky] + x0 + i * lda (lda = stride * Cp): adjacent, so one run of 3 Cp
// bf16 read in place (rows overlap where lda < 3 Cp); W_ky is w's taps (ky, 0..2), consecutive
// (3 K2 pairs, 2 CoutP wide). Three GEMMs of K = 3 Cp rather than nine of Cp: fewer calls
// (each brgemm call has a fixed cost) and longer K runs for the tiles. Through brgemm when `brg`,
// else the own micro-kernel in blocks of 8 rows (C and A hold rows up to M rounded up to 8).
void direct_gemms(const bf16_t* const rows[3], int64_t x0, int64_t lda, int64_t M, const bf16_t* w, int64_t K2,
                  int64_t CoutP, int64_t n_cols, const BrgemmWeights* brg, float* C) {
  for (int64_t ky = 0; ky < 3; ++ky) {
    const bf16_t* a = rows[ky] + x0;
    if (brg != nullptr) {
      brg->gemm(ky, a, lda, M, C, CoutP, ky > 0);
      continue;
    }
    for (int64_t r0 = 0; r0 < M; r0 += kRows)
      gemm_bf16_8rows(a + r0 * lda, lda, w + ky * 3 * K2 * 2 * CoutP, 2 * CoutP, 3 * K2, C + r0 * CoutP, CoutP,
                      n_cols, ky > 0);
  }
}

}  // namespace

// x (N, Cin, H, W) float32 (a channel slice of a channels_last tensor is read in place); w bf16
// (9, ceil(Cin / 2), 2 CoutP): tap ky * 3 + kx's weight as gemm_bf16.h's pairs
// (esr_kernels.packing.pack_direct_3x3_bf16); bias (CoutP,) float32; any stride and zero
// padding. The conv output's c_conv channels go through the epilogue with the other arguments.
at::Tensor conv3x3_direct_bf16(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in,
                               int64_t stride, int64_t padding, int64_t c_conv, int64_t act,
                               const c10::optional<at::Tensor>& passthrough, int64_t c_out,
                               const c10::optional<at::Tensor>& residual, int64_t residual_mode,
                               const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& shortcut,
                               int64_t shortcut_mode, int64_t shuffle) {
  const int64_t N = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3), K2 = (Cin + 1) / 2;
  TORCH_CHECK(stride >= 1 && padding >= 0 && H + 2 * padding >= 3 && W + 2 * padding >= 3,
              "conv3x3_im2col: bad stride or padding for a ", H, "x", W, " input");
  TORCH_CHECK(w_in.dim() == 3 && w_in.size(0) == 9 && w_in.size(1) == K2 && w_in.size(2) % 32 == 0,
              "conv3x3_im2col: bf16 w must be (9, ceil(C_in / 2), 2 CoutP) = (9, ", K2, ", 2 CoutP), got ",
              w_in.sizes());
  const int64_t CoutP = w_in.size(2) / 2, Ho = (H + 2 * padding - 3) / stride + 1, Wo = (W + 2 * padding - 3) / stride + 1;
  TORCH_CHECK(c_conv <= CoutP && CoutP < c_conv + kLanes && bias_in.numel() == CoutP,
              "conv3x3_im2col: bad packed output channels");
  int64_t ldx = Cin;
  const at::Tensor x = nhwc_or_slice(x_in, &ldx);
  const at::Tensor w = w_in.contiguous(), bias = bias_in.to(at::kFloat).contiguous();
  const ConvEpilogue epi("conv3x3_im2col", N, c_conv, Ho, Wo, x, passthrough, c_out, residual, residual_mode, att,
                         shortcut, shortcut_mode, shuffle);
  const int64_t n_cols = std::min(CoutP, (c_conv + 7) / 8 * 8), segs = (Wo + kDirectPixels - 1) / kDirectPixels;
  std::vector<std::pair<int64_t, int64_t>> mats;
  for (int64_t ky = 0; ky < 3; ++ky) mats.emplace_back(ky * 3 * K2 * 2 * CoutP, 3 * K2);
  const auto brg = make_brgemm(true, w, CoutP, n_cols, std::move(mats));
  const auto* Wt = static_cast<const bf16_t*>(w.data_ptr());
  const float *X = x.data_ptr<float>(), *B = bias.data_ptr<float>();
  dispatch_act(act, [&](auto act_c) {
    at::parallel_for(0, N * Ho * segs, 1, [&](int64_t begin, int64_t end) {
      const BrgemmDone brgemm_done(brg != nullptr);
      Bf16Rows in(X, ldx, H, W, Cin, padding, kRows * stride + 2);
      const int64_t Cp = in.pixel();
      std::vector<float> ybuf(kDirectPixels * CoutP), scratch(epi.scratch_floats(kDirectPixels));
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t n = unit / (Ho * segs), oy = unit / segs % Ho, ox0 = unit % segs * kDirectPixels;
        const int64_t ox1 = std::min(Wo, ox0 + kDirectPixels);
        const bf16_t* rows[3] = {in.row(n, oy * stride), in.row(n, oy * stride + 1), in.row(n, oy * stride + 2)};
        direct_gemms(rows, ox0 * stride * Cp, stride * Cp, ox1 - ox0, Wt, K2, CoutP, n_cols, brg.get(), ybuf.data());
        epi.segment<decltype(act_c)::value>(n, oy, ox0, ox1, ybuf.data(), CoutP, B, scratch.data());
      }
    });
  });
  return epi.out();
}

#endif  // ESR_HAVE_BF16_ENGINE

ESR_CPU_NAMESPACE_END
