// Dense 3x3 convolution in bfloat16 as an implicit GEMM, for AMX tiles (issue 29).
//
// Why not Winograd there: on an AMX Xeon oneDNN's brgemm runs the GEMMs so fast that
// Winograd's float32 transforms become the cost (48 channels at 256x256, 2 threads: our bf16
// Winograd through brgemm ~3.4 ms, oneDNN's direct bf16 conv 1.5 ms). Here each input row is
// rounded to bf16 once, into a thread's three zero-bordered rows interleaved per pixel
// (Bf16Rows), so that each output segment is one GEMM over all 9 taps (K = 9 C_in) whose A rows
// are read in place, accumulated in float32, then the conv epilogue (epilogue.h). Products of
// bf16-rounded inputs and weights, summed in float32: the rounding of a bf16 direct convolution
// (oneDNN's, autocast's).
#include "epilogue.h"
#include "gemm.h"
#include "gemm_bf16.h"

ESR_CPU_NAMESPACE_BEGIN

#if defined(ESR_HAVE_BF16_ENGINE)

namespace {

constexpr int64_t kDirectPixels = 32 * kRows;  // output pixels per GEMM (a 256-pixel row in one)

// Three consecutive padded input rows of image n in bf16, for one thread, interleaved per pixel:
// pixel p holds (slot 0, slot 1, slot 2), each Cp bf16 (C rounded up to even, the odd channel
// zero), where slot yp % 3 holds padded row yp (input row yp - pad; a zero border of `pad`
// pixels). So the 9 taps of output pixel i are one contiguous run of 9 Cp bf16 from pixel
// i * stride, in the order (kx, slot, channel): an output segment is ONE GEMM with K = 9 Cp and
// A read in place (rows at stride `stride` pixels, overlapping). A row is converted when first
// asked for and kept until its slot is needed by row yp + 3; a thread's units are consecutive
// output rows, so each input row is converted about once, and no bf16 copy of the whole image
// goes through memory. The buffer ends in zero pixels (`slack_pixels`): the own micro-kernel's
// 8-row blocks may read past a segment's last pixel.
class Bf16Rows {
 public:
  Bf16Rows(const float* X, int64_t ldx, int64_t H, int64_t W, int64_t C, int64_t pad, int64_t slack_pixels)
      : X_(X), ldx_(ldx), H_(H), W_(W), C_(C), pad_(pad), Cp_(2 * ((C + 1) / 2)),
        data_((W + 2 * pad + slack_pixels) * 3 * Cp_, bf16_t{0}) {}

  int64_t pixel() const { return 3 * Cp_; }  // bf16 per interleaved pixel

  // Makes slot yp % 3 hold padded row yp of image n; returns the buffer.
  const bf16_t* ensure(int64_t n, int64_t yp) {
    const int64_t slot = yp % 3, ld = 3 * Cp_, Wp = W_ + 2 * pad_;
    bf16_t* d = data_.data() + slot * Cp_;
    if (tag_[slot] == std::make_pair(n, yp)) return data_.data();
    tag_[slot] = {n, yp};
    const int64_t y = yp - pad_;
    const bool inside = y >= 0 && y < H_;
    const auto zero = [&](int64_t p0, int64_t p1) {  // this slot of pixels [p0, p1)
      for (int64_t p = p0; p < p1; ++p) std::fill(d + p * ld, d + p * ld + Cp_, bf16_t{0});
    };
    if (!inside) {
      zero(0, Wp);
      return data_.data();
    }
    zero(0, pad_);
    rows_to_bf16(X_ + (n * H_ + y) * W_ * ldx_, ldx_, W_, C_, d + pad_ * ld, ld);
    zero(pad_ + W_, Wp);
    return data_.data();
  }

 private:
  const float* X_;
  int64_t ldx_, H_, W_, C_, pad_, Cp_;
  std::vector<bf16_t> data_;
  std::pair<int64_t, int64_t> tag_[3] = {{-1, -1}, {-1, -1}, {-1, -1}};
};

// C[M x n_cols] = A @ W_q: A's row i is the 9 Cp run from A0 + i * lda (Bf16Rows), W_q is w's
// matrix q (9 K2 pairs, 2 CoutP wide), the taps in A's order for rows whose slots are rotated by q
// (esr_kernels.packing.pack_direct_3x3_bf16). Through brgemm when `brg`, else the own
// micro-kernel in blocks of 8 rows (C and A hold rows up to M rounded up to 8).
void direct_gemm(const bf16_t* A0, int64_t lda, int64_t M, int64_t q, const bf16_t* w, int64_t K2, int64_t CoutP,
                 int64_t n_cols, const BrgemmWeights* brg, float* C) {
  if (brg != nullptr) {
    brg->gemm(q, A0, lda, M, C, CoutP, false);
    return;
  }
  for (int64_t r0 = 0; r0 < M; r0 += kRows)
    gemm_bf16_8rows(A0 + r0 * lda, lda, w + q * 9 * K2 * 2 * CoutP, 2 * CoutP, 9 * K2, C + r0 * CoutP, CoutP, n_cols,
                    false);
}

}  // namespace

// x (N, Cin, H, W) float32 (a channel slice of a channels_last tensor is read in place; stride
// and padding checked by conv3x3_im2col, which calls this for bf16 weights); w bf16
// (3, 9 ceil(Cin / 2), 2 CoutP): for each slot rotation q, the taps in Bf16Rows' order as
// gemm_bf16.h's pairs (esr_kernels.packing.pack_direct_3x3_bf16); bias (CoutP,) float32; any
// stride and zero padding. The conv output's c_conv channels go through the epilogue with the
// other arguments.
at::Tensor conv3x3_direct_bf16(const at::Tensor& x_in, const at::Tensor& w_in, const at::Tensor& bias_in,
                               int64_t stride, int64_t padding, int64_t c_conv, int64_t act,
                               const c10::optional<at::Tensor>& passthrough, int64_t c_out,
                               const c10::optional<at::Tensor>& residual, int64_t residual_mode,
                               const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& shortcut,
                               int64_t shortcut_mode, int64_t shuffle) {
  const int64_t N = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3), K2 = (Cin + 1) / 2;
  TORCH_CHECK(w_in.dim() == 3 && w_in.size(0) == 3 && w_in.size(1) == 9 * K2 && w_in.size(2) % 32 == 0,
              "conv3x3_im2col: bf16 w must be (3, 9 ceil(C_in / 2), 2 CoutP) = (3, ", 9 * K2, ", 2 CoutP), got ",
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
  for (int64_t q = 0; q < 3; ++q) mats.emplace_back(q * 9 * K2 * 2 * CoutP, 9 * K2);
  const auto brg = make_brgemm(true, w, CoutP, n_cols, std::move(mats));
  const auto* Wt = static_cast<const bf16_t*>(w.data_ptr());
  const float *X = x.data_ptr<float>(), *B = bias.data_ptr<float>();
  dispatch_act(act, [&](auto act_c) {
    at::parallel_for(0, N * Ho * segs, 1, [&](int64_t begin, int64_t end) {
      const BrgemmDone brgemm_done(brg != nullptr);
      Bf16Rows in(X, ldx, H, W, Cin, padding, kRows * stride + 2);
      const int64_t px = in.pixel();
      std::vector<float> ybuf(kDirectPixels * CoutP), scratch(epi.scratch_floats(kDirectPixels));
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t n = unit / (Ho * segs), oy = unit / segs % Ho, ox0 = unit % segs * kDirectPixels;
        const int64_t ox1 = std::min(Wo, ox0 + kDirectPixels), y0 = oy * stride;
        in.ensure(n, y0);
        in.ensure(n, y0 + 1);
        const bf16_t* rows = in.ensure(n, y0 + 2);
        direct_gemm(rows + ox0 * stride * px, stride * px, ox1 - ox0, y0 % 3, Wt, K2, CoutP, n_cols, brg.get(),
                    ybuf.data());
        epi.segment<decltype(act_c)::value>(n, oy, ox0, ox1, ybuf.data(), CoutP, B, scratch.data());
      }
    });
  });
  return epi.out();
}

#endif  // ESR_HAVE_BF16_ENGINE

ESR_CPU_NAMESPACE_END
