// LocalAttention gate and the conv epilogues around oneDNN convolutions.
#include "common.h"

namespace esr_cpu {

namespace {

// gate(x)[c] = x[c] * up(att)[c] * sigmoid(x[0]) at pixel (n, y, x0), written to out[0..C).
// att is float32 channels_last (N, C, h, w); same order of operations as the reference.
inline void gate_pixel(const float* xp, const float* A, int64_t n, int64_t y, int64_t x,
                       int64_t C, int64_t ah, int64_t aw, float sh, float sw, float* out) {
  const Taps ty = bilinear_taps(y, sh, ah), tx = bilinear_taps(x, sw, aw);
  const float* a00 = A + ((n * ah + ty.i0) * aw + tx.i0) * C;
  const float* a01 = A + ((n * ah + ty.i0) * aw + tx.i1) * C;
  const float* a10 = A + ((n * ah + ty.i1) * aw + tx.i0) * C;
  const float* a11 = A + ((n * ah + ty.i1) * aw + tx.i1) * C;
  const float g = sigmoid(xp[0]);
#pragma omp simd
  for (int64_t c = 0; c < C; ++c) {
    const float up = ty.l0 * (tx.l0 * a00[c] + tx.l1 * a01[c]) + ty.l1 * (tx.l0 * a10[c] + tx.l1 * a11[c]);
    out[c] = xp[c] * up * g;
  }
}

}  // namespace

// x (N, C, H, W), att (N, C, h, w) -> x * bilinear_up(att) * sigmoid(x[:, :1]), channels_last.
at::Tensor gate(const at::Tensor& x_in, const at::Tensor& att_in) {
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(att_in.size(0) == N && att_in.size(1) == C, "gate: att must be (N, C, h, w)");
  at::Tensor x = as_nhwc(x_in), att = as_nhwc(att_in);
  const int64_t ah = att.size(2), aw = att.size(3);
  const float sh = static_cast<float>(ah) / H, sw = static_cast<float>(aw) / W;
  at::Tensor out = empty_nhwc(N, C, H, W, x);
  const float* X = x.data_ptr<float>();
  const float* A = att.data_ptr<float>();
  float* O = out.data_ptr<float>();
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, y = row % H;
      for (int64_t xx = 0; xx < W; ++xx) {
        const int64_t off = ((n * H + y) * W + xx) * C;
        gate_pixel(X + off, A, n, y, xx, C, ah, aw, sh, sw, O + off);
      }
    }
  });
  return out;
}

// The epilogue of a dense conv whose raw output (bias included) is y (N, c_conv, H, W):
//   z = act(y) for channels < c_conv; channels [c_conv, c_out) copy ``passthrough``;
//   z += residual (RES_TENSOR) or gate(residual, att) (RES_GATED_INPUT);
//   shuffle r > 0: z += shortcut (image repeated r^2 times per channel, or a per-image-channel
//   vector), pixel shuffle; output NCHW (N, c_out / r^2, r H, r W). Otherwise channels_last.
at::Tensor conv_epilogue(const at::Tensor& y_in, const c10::optional<at::Tensor>& passthrough_in,
                         int64_t c_out, int64_t act, const c10::optional<at::Tensor>& residual_in,
                         int64_t residual_mode, const c10::optional<at::Tensor>& att_in,
                         const c10::optional<at::Tensor>& shortcut_in, int64_t shortcut_mode,
                         int64_t shuffle) {
  const int64_t N = y_in.size(0), Cc = y_in.size(1), H = y_in.size(2), W = y_in.size(3);
  TORCH_CHECK(c_out >= Cc, "conv_epilogue: c_out < conv channels");
  TORCH_CHECK(c_out == Cc || passthrough_in.has_value(), "conv_epilogue: partial output needs passthrough");
  at::Tensor y = as_nhwc(y_in);
  at::Tensor pt, res, att, sc;
  if (passthrough_in.has_value()) pt = as_nhwc(*passthrough_in);
  if (residual_mode != RES_NONE) {
    TORCH_CHECK(residual_in.has_value(), "conv_epilogue: residual missing");
    res = as_nhwc(*residual_in);
  }
  if (residual_mode == RES_GATED_INPUT) {
    TORCH_CHECK(att_in.has_value(), "conv_epilogue: gated residual needs att");
    att = as_nhwc(*att_in);
  }
  if (shortcut_mode == SHORTCUT_REPEAT_INPUT) sc = as_nhwc(*shortcut_in);
  if (shortcut_mode == SHORTCUT_VECTOR) sc = shortcut_in->to(at::kFloat).contiguous();
  const int64_t Cp = pt.defined() ? pt.size(1) : 0;
  const int64_t r = shuffle > 0 ? shuffle : 1, r2 = r * r;
  at::Tensor out = shuffle > 0
      ? cached_empty({N, c_out / r2, H * r, W * r}, y)
      : empty_nhwc(N, c_out, H, W, y);
  const float* Y = y.data_ptr<float>();
  const float* PT = pt.defined() ? pt.data_ptr<float>() : nullptr;
  const float* RS = res.defined() ? res.data_ptr<float>() : nullptr;
  const float* AT = att.defined() ? att.data_ptr<float>() : nullptr;
  const float* SC = sc.defined() ? sc.data_ptr<float>() : nullptr;
  const int64_t ah = att.defined() ? att.size(2) : 1, aw = att.defined() ? att.size(3) : 1;
  const float sh = static_cast<float>(ah) / H, sw = static_cast<float>(aw) / W;
  const int64_t sc_c = (shortcut_mode == SHORTCUT_REPEAT_INPUT) ? sc.size(1) : 0;
  float* O = out.data_ptr<float>();

  dispatch_act(act, [&](auto act_c) {
    constexpr int64_t ACT = decltype(act_c)::value;
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      // With a shuffle, a whole input row is assembled first, then written as r output rows
      // per image channel, each contiguous (per-pixel scattered writes ran ~6x slower).
      std::vector<float> row_buf(shuffle > 0 ? W * c_out : 0), gated(c_out);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / H, yy = row % H;
        for (int64_t xx = 0; xx < W; ++xx) {
          const int64_t pix = (n * H + yy) * W + xx;
          const float* yp = Y + pix * Cc;
          float* zp = shuffle == 0 ? O + pix * c_out : row_buf.data() + xx * c_out;
#pragma omp simd
          for (int64_t c = 0; c < Cc; ++c) zp[c] = activate<ACT>(yp[c]);
          for (int64_t c = Cc; c < c_out; ++c) zp[c] = PT[pix * Cp + c];
          if (residual_mode == RES_TENSOR) {
            const float* rp = RS + pix * c_out;
#pragma omp simd
            for (int64_t c = 0; c < c_out; ++c) zp[c] += rp[c];
          } else if (residual_mode == RES_GATED_INPUT) {
            gate_pixel(RS + pix * c_out, AT, n, yy, xx, c_out, ah, aw, sh, sw, gated.data());
#pragma omp simd
            for (int64_t c = 0; c < c_out; ++c) zp[c] += gated[c];
          }
          if (shortcut_mode == SHORTCUT_REPEAT_INPUT) {
            for (int64_t c = 0; c < c_out; ++c) zp[c] += SC[pix * sc_c + c / r2];
          } else if (shortcut_mode == SHORTCUT_VECTOR) {
            for (int64_t c = 0; c < c_out; ++c) zp[c] += SC[c / r2];
          }
        }
        if (shuffle == 0) continue;
        const int64_t Ho = H * r, Wo = W * r, Co = c_out / r2;
        for (int64_t ic = 0; ic < Co; ++ic) {
          for (int64_t i = 0; i < r; ++i) {
            float* dst = O + ((n * Co + ic) * Ho + yy * r + i) * Wo;
            const float* src = row_buf.data() + ic * r2 + i * r;
            for (int64_t xx = 0; xx < W; ++xx)
              for (int64_t j = 0; j < r; ++j) dst[xx * r + j] = src[xx * c_out + j];
          }
        }
      }
    });
  });
  return out;
}

// ESA output: x * sigmoid(s + bilinear_up(low)) [+ residual]; s (N, C, H, W) is the folded
// full-resolution 1x1 branch, low (N, C, hp, wp) the expanded low-resolution branch.
at::Tensor esa_tail(const at::Tensor& x_in, const at::Tensor& s_in, const at::Tensor& low_in,
                    const c10::optional<at::Tensor>& residual_in) {
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  at::Tensor x = as_nhwc(x_in), s = as_nhwc(s_in), low = as_nhwc(low_in), res;
  if (residual_in.has_value()) res = as_nhwc(*residual_in);
  const int64_t lh = low.size(2), lw = low.size(3);
  const float sh = static_cast<float>(lh) / H, sw = static_cast<float>(lw) / W;
  at::Tensor out = empty_nhwc(N, C, H, W, x);
  const float* X = x.data_ptr<float>();
  const float* S = s.data_ptr<float>();
  const float* L = low.data_ptr<float>();
  const float* R = res.defined() ? res.data_ptr<float>() : nullptr;
  float* O = out.data_ptr<float>();
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / H, yy = row % H;
      const Taps ty = bilinear_taps(yy, sh, lh);
      for (int64_t xx = 0; xx < W; ++xx) {
        const Taps tx = bilinear_taps(xx, sw, lw);
        const float* a00 = L + ((n * lh + ty.i0) * lw + tx.i0) * C;
        const float* a01 = L + ((n * lh + ty.i0) * lw + tx.i1) * C;
        const float* a10 = L + ((n * lh + ty.i1) * lw + tx.i0) * C;
        const float* a11 = L + ((n * lh + ty.i1) * lw + tx.i1) * C;
        const int64_t off = ((n * H + yy) * W + xx) * C;
        const float* xp = X + off;
        const float* sp = S + off;
        float* o = O + off;
        // Two short loops: the logits first, then the gate (one fused body ran ~7x slower).
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          o[c] = sp[c] + (ty.l0 * (tx.l0 * a00[c] + tx.l1 * a01[c]) + ty.l1 * (tx.l0 * a10[c] + tx.l1 * a11[c]));
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) o[c] = xp[c] * sigmoid(o[c]);
        if (R) {
          const float* rp = R + off;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] += rp[c];
        }
      }
    }
  });
  return out;
}

}  // namespace esr_cpu
