// LocalAttention gate, the conv epilogue after a oneDNN convolution, and the ESA tail.
#include "epilogue.h"

ESR_CPU_NAMESPACE_BEGIN

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
  std::vector<Taps> tx(W);
  for (int64_t xx = 0; xx < W; ++xx) tx[xx] = bilinear_taps(xx, sw, aw);
  at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> g(W);
    for (int64_t row = begin; row < end; ++row)
      gate_row(X + row * W * C, A, row / H, row % H, W, C, ah, aw, sh, tx.data(), g.data(), O + row * W * C);
  });
  return out;
}

// The epilogue (epilogue.h) of a dense conv whose raw output, bias included, is y (N, c_conv, H, W).
at::Tensor conv_epilogue(const at::Tensor& y_in, const c10::optional<at::Tensor>& passthrough,
                         int64_t c_out, int64_t act, const c10::optional<at::Tensor>& residual,
                         int64_t residual_mode, const c10::optional<at::Tensor>& att,
                         const c10::optional<at::Tensor>& shortcut, int64_t shortcut_mode,
                         int64_t shuffle) {
  const int64_t N = y_in.size(0), Cc = y_in.size(1), H = y_in.size(2), W = y_in.size(3);
  at::Tensor y = as_nhwc(y_in);
  const ConvEpilogue epi("conv_epilogue", N, Cc, H, W, y, passthrough, c_out, residual, residual_mode, att,
                         shortcut, shortcut_mode, shuffle);
  const float* Y = y.data_ptr<float>();
  dispatch_act(act, [&](auto act_c) {
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> scratch(epi.scratch_floats(W));
      for (int64_t row = begin; row < end; ++row)
        epi.segment<decltype(act_c)::value>(row / H, row % H, 0, W, Y + row * W * Cc, Cc, nullptr, scratch.data());
    });
  });
  return epi.out();
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
        const float* sp = S + off;
        float* o = O + off;
        // The logits per pixel; the gate below over the whole row (one vector loop).
#pragma omp simd
        for (int64_t c = 0; c < C; ++c)
          o[c] = sp[c] + (ty.l0 * (tx.l0 * a00[c] + tx.l1 * a01[c]) + ty.l1 * (tx.l0 * a10[c] + tx.l1 * a11[c]));
      }
      const int64_t row0 = (n * H + yy) * W * C;
      sigmoid_gate_span(O + row0, X + row0, R ? R + row0 : nullptr, W * C);
    }
  });
  return out;
}

ESR_CPU_NAMESPACE_END
