// The epilogue of a dense conv, shared by the standalone conv_epilogue op (after a oneDNN
// conv) and the conv engine (fused: applied to each block of conv output while it is in cache).
// For the conv output y (bias optional) of c_conv channels at pixel (n, yy, xx):
//   z = act(y + bias) for channels < c_conv; channels [c_conv, c_out) copy `passthrough`;
//   z += residual (RES_TENSOR) or gate(residual, att) (RES_GATED_INPUT), or
//   z = (z + residual) * (sigmoid(z) - 0.5) (RES_SPAN_ATT: SPAN's attention; full convs only,
//   no shortcut or shuffle);
//   shuffle r > 0: z += shortcut (image repeated r^2 times per channel, or a per-image-channel
//   vector), pixel shuffle; output NCHW (N, c_out / r^2, r H, r W). Otherwise channels_last.
#pragma once

#include "activation_span.h"

ESR_CPU_NAMESPACE_BEGIN

// gate(x)[c] = x[c] * up(att)[c] * sigmoid(x[0]) at pixel (n, y, x), written to out[0..C).
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

// gate() over pixels [0, W) of row (n, y): out = x * up(att) * sigmoid(x[:, 0]), x and out at
// pixel stride C. The sigmoids of the row's first channels run as one vector span (per pixel,
// one scalar exp was half the op's time); `tx` holds the horizontal taps of every column
// (they depend on the column only); `g` has room for W floats.
inline void gate_row(const float* xrow, const float* A, int64_t n, int64_t y, int64_t W, int64_t C, int64_t ah,
                     int64_t aw, float sh, const Taps* tx, float* g, float* out) {
  for (int64_t xx = 0; xx < W; ++xx) g[xx] = xrow[xx * C];
  activate_span<ACT_SIGMOID>(g, nullptr, W);
  const Taps ty = bilinear_taps(y, sh, ah);
  const float* r0 = A + (n * ah + ty.i0) * aw * C;
  const float* r1 = A + (n * ah + ty.i1) * aw * C;
  for (int64_t xx = 0; xx < W; ++xx) {
    const Taps t = tx[xx];
    const float *a00 = r0 + t.i0 * C, *a01 = r0 + t.i1 * C, *a10 = r1 + t.i0 * C, *a11 = r1 + t.i1 * C;
    const float* xp = xrow + xx * C;
    float* o = out + xx * C;
    const float gx = g[xx];
#pragma omp simd
    for (int64_t c = 0; c < C; ++c) {
      const float up = ty.l0 * (t.l0 * a00[c] + t.l1 * a01[c]) + ty.l1 * (t.l0 * a10[c] + t.l1 * a11[c]);
      o[c] = xp[c] * up * gx;
    }
  }
}

class ConvEpilogue {
 public:
  // Validates the operands and allocates the output for a conv output of (N, c_conv, H, W).
  ConvEpilogue(const char* op, int64_t N, int64_t c_conv, int64_t H, int64_t W, const at::Tensor& like,
               const c10::optional<at::Tensor>& passthrough, int64_t c_out, const c10::optional<at::Tensor>& residual,
               int64_t residual_mode, const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& shortcut,
               int64_t shortcut_mode, int64_t shuffle)
      : N_(N), H_(H), W_(W), Cc_(c_conv), c_out_(c_out), residual_mode_(residual_mode),
        shortcut_mode_(shortcut_mode), r_(shuffle > 0 ? shuffle : 1), shuffled_(shuffle > 0) {
    TORCH_CHECK(c_out >= c_conv, op, ": c_out < conv channels");
    TORCH_CHECK(c_out == c_conv || passthrough.has_value(), op, ": partial output needs passthrough");
    if (passthrough.has_value()) {
      pt_ = as_nhwc(*passthrough);
      TORCH_CHECK(pt_.size(1) >= c_out && pt_.size(2) == H && pt_.size(3) == W, op, ": bad passthrough shape");
    }
    if (residual_mode != RES_NONE) {
      TORCH_CHECK(residual.has_value() && residual->size(1) == c_out && residual->size(2) == H &&
                      residual->size(3) == W, op, ": residual must be (N, c_out, H, W)");
      res_ = as_nhwc(*residual);
    }
    // SPAN's attention multiplies the whole z: segment() computes it on its own path, which
    // has no partial channels, shortcut or shuffle (SPAN needs none).
    TORCH_CHECK(residual_mode != RES_SPAN_ATT || (c_out == c_conv && shortcut_mode == SHORTCUT_NONE && shuffle == 0),
                op, ": RES_SPAN_ATT supports neither partial output channels, a shortcut nor pixel shuffle");
    if (residual_mode == RES_GATED_INPUT) {
      TORCH_CHECK(att.has_value(), op, ": gated residual needs att");
      att_ = as_nhwc(*att);
    }
    if (shortcut_mode == SHORTCUT_REPEAT_INPUT) sc_ = as_nhwc(*shortcut);
    if (shortcut_mode == SHORTCUT_VECTOR) sc_ = shortcut->to(at::kFloat).contiguous();
    TORCH_CHECK(shuffle == 0 || c_out % (r_ * r_) == 0, op, ": c_out not divisible by shuffle^2");
    out_ = shuffle > 0 ? cached_empty({N, c_out / (r_ * r_), H * r_, W * r_}, like) : empty_nhwc(N, c_out, H, W, like);
    if (att_.defined()) {
      ah_ = att_.size(2);
      aw_ = att_.size(3);
    }
    sh_ = static_cast<float>(ah_) / H;
    sw_ = static_cast<float>(aw_) / W;
  }

  const at::Tensor& out() const { return out_; }
  // Floats of scratch that segment() needs for `pixels` pixels.
  int64_t scratch_floats(int64_t pixels) const { return (2 * pixels + 1) * c_out_; }

  // Pixels [x0, x1) of output row (n, yy); the conv output of pixel xx is at ysrc + (xx - x0) * ldy
  // (without bias if `bias` is given).
  template <int64_t ACT>
  void segment(int64_t n, int64_t yy, int64_t x0, int64_t x1, const float* ysrc, int64_t ldy, const float* bias,
               float* scratch) const {
    const int64_t Cc = Cc_, c_out = c_out_, r = r_, r2 = r * r, Cp = pt_.defined() ? pt_.size(1) : 0;
    const bool shuffle = shuffled_;
    const float* PT = pt_.defined() ? pt_.data_ptr<float>() : nullptr;
    const float* RS = res_.defined() ? res_.data_ptr<float>() : nullptr;
    const float* SC = sc_.defined() ? sc_.data_ptr<float>() : nullptr;
    const int64_t sc_c = shortcut_mode_ == SHORTCUT_REPEAT_INPUT ? sc_.size(1) : 0;
    float* O = out_.data_ptr<float>();
    if (residual_mode_ == RES_SPAN_ATT) {  // act(y + bias), then the attention, each over the whole segment
      const int64_t off = ((n * H_ + yy) * W_ + x0) * c_out;
      biased_rows<ACT>(ysrc, ldy, bias, x1 - x0, c_out, O + off, nullptr);
      span_attention_rows(O + off, RS + off, scratch, (x1 - x0) * c_out);
      return;
    }
    if (bias && !shuffle && Cc == c_out && residual_mode_ != RES_GATED_INPUT) {
      // The common case (the conv engine's plain convs): act(y + bias) [+ residual], without
      // the per-pixel mode branches of the general loop below.
      float* zrow = O + ((n * H_ + yy) * W_ + x0) * c_out;
      biased_rows<ACT>(ysrc, ldy, bias, x1 - x0, c_out, zrow, RS ? RS + ((n * H_ + yy) * W_ + x0) * c_out : nullptr);
      return;
    }
    // scratch: [the shuffled segment's z | one gated pixel | the partial conv's activated channels]
    float* gated = scratch + (x1 - x0) * c_out;
    float* partial = gated + c_out;
    // The activation over the whole segment at once (activate_span: vectors across pixels).
    if (Cc == c_out)
      biased_rows<ACT>(ysrc, ldy, bias, x1 - x0, c_out, shuffle ? scratch : O + ((n * H_ + yy) * W_ + x0) * c_out,
                       nullptr);
    else
      biased_rows<ACT>(ysrc, ldy, bias, x1 - x0, Cc, partial, nullptr);
    for (int64_t xx = x0; xx < x1; ++xx) {
      const int64_t pix = (n * H_ + yy) * W_ + xx;
      float* zp = shuffle ? scratch + (xx - x0) * c_out : O + pix * c_out;
      if (Cc < c_out) {
        std::memcpy(zp, partial + (xx - x0) * Cc, Cc * sizeof(float));
        std::memcpy(zp + Cc, PT + pix * Cp + Cc, (c_out - Cc) * sizeof(float));
      }
      if (residual_mode_ == RES_TENSOR) {
        const float* rp = RS + pix * c_out;
#pragma omp simd
        for (int64_t c = 0; c < c_out; ++c) zp[c] += rp[c];
      } else if (residual_mode_ == RES_GATED_INPUT) {
        gate_pixel(RS + pix * c_out, att_.data_ptr<float>(), n, yy, xx, c_out, ah_, aw_, sh_, sw_, gated);
#pragma omp simd
        for (int64_t c = 0; c < c_out; ++c) zp[c] += gated[c];
      }
      if (shortcut_mode_ != SHORTCUT_NONE) {
        // Output channel c belongs to image channel c / r^2 (looped that way: no division).
        const float* sp = shortcut_mode_ == SHORTCUT_REPEAT_INPUT ? SC + pix * sc_c : SC;
        for (int64_t ic = 0; ic < c_out / r2; ++ic) {
          const float v = sp[ic];
#pragma omp simd
          for (int64_t k = 0; k < r2; ++k) zp[ic * r2 + k] += v;
        }
      }
    }
    if (!shuffle) return;
    // Each image channel's r output rows are written as contiguous runs (per-pixel scattered
    // writes measured ~6x slower).
    const int64_t Ho = H_ * r, Wo = W_ * r, Co = c_out / r2;
    for (int64_t ic = 0; ic < Co; ++ic)
      for (int64_t i = 0; i < r; ++i) {
        float* dst = O + ((n * Co + ic) * Ho + yy * r + i) * Wo + x0 * r;
        const float* src = scratch + ic * r2 + i * r;
        for (int64_t xx = 0; xx < x1 - x0; ++xx)
          for (int64_t j = 0; j < r; ++j) dst[xx * r + j] = src[xx * c_out + j];
      }
  }

  // Prefetches (common.h) what segment() will write and read for flat pixels [p0, p1):
  // the channels_last output and the residual.
  void prefetch(int64_t p0, int64_t p1) const {
    if (shuffled_) return;  // (the shuffled output is written in row runs of another layout)
    prefetch_span(out_.data_ptr<float>() + p0 * c_out_, (p1 - p0) * c_out_ * sizeof(float), true);
    if (res_.defined()) prefetch_span(res_.data_ptr<float>() + p0 * c_out_, (p1 - p0) * c_out_ * sizeof(float));
  }

  // segment() over the flat pixel range [p0, p1), split at row ends; pixel p at ysrc + (p - p0) * ldy.
  template <int64_t ACT>
  void pixels(int64_t p0, int64_t p1, const float* ysrc, int64_t ldy, const float* bias, float* scratch) const {
    for (int64_t p = p0; p < p1;) {
      const int64_t row = p / W_, xx = p % W_, x1 = std::min(W_, xx + (p1 - p));
      segment<ACT>(row / H_, row % H_, xx, x1, ysrc + (p - p0) * ldy, ldy, bias, scratch);
      p += x1 - xx;
    }
  }

 private:
  // z[i][c] = act(y[i][c] (+ bias[c])) (+ res[i][c]) for `pixels` pixels of C channels, y at
  // pixel stride ldy, z and res contiguous. The activation runs as one flat loop over all the
  // pixels: per pixel, GCC's 16-lane loop would leave c_out % 16 channels (IFADNet's 36: 4)
  // to scalar code, which took about half the epilogue's time; the copy keeps those tails (a
  // scalar add is cheap, a scalar GELU is not).
  template <int64_t ACT>
  static void biased_rows(const float* y, int64_t ldy, const float* bias, int64_t pixels, int64_t C, float* z,
                          const float* res) {
    const int64_t len = pixels * C;
    for (int64_t i = 0; i < pixels; ++i) {
      const float* yp = y + i * ldy;
      float* zp = z + i * C;
      if (bias) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) zp[c] = yp[c] + bias[c];
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) zp[c] = yp[c];
      }
    }
    activate_span<ACT>(z, res, len);
  }

  // z[i] = span_attention(z[i], x[i], sigmoid(z[i])) for i < len (RES_SPAN_ATT), the sigmoids
  // as one vector span (activate_span) on a copy in s (len floats: scratch_floats' first
  // pixels * c_out).
  static void span_attention_rows(float* z, const float* x, float* s, int64_t len) {
    std::memcpy(s, z, len * sizeof(float));
    activate_span<ACT_SIGMOID>(s, nullptr, len);
#pragma omp simd
    for (int64_t i = 0; i < len; ++i) z[i] = esr_maths::span_attention(z[i], x[i], s[i]);
  }

  int64_t N_, H_, W_, Cc_, c_out_, residual_mode_, shortcut_mode_, r_;
  bool shuffled_;
  int64_t ah_ = 1, aw_ = 1;
  float sh_ = 1.0f, sw_ = 1.0f;
  at::Tensor pt_, res_, att_, sc_, out_;
};

ESR_CPU_NAMESPACE_END
