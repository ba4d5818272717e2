// CPU versions of the single-kernel CUDA ops esr_native::bsb, esa_out and la_reduce: the same
// per-pixel functions as the CUDA kernels (csrc/common/pixel_ops.h), looped over pixels, so the
// CUDA kernels' arithmetic runs (and is tested) on every machine. Inputs of any float dtype and
// any strides are read through their strides, as the CUDA kernels read them; outputs are float32
// channels_last, as every CPU kernel's. The CPU backend itself uses the faster kernels of this
// folder; these exist for the shared code's sake.
#include "../common/channels.h"
#include "../common/pixel_ops.h"
#include "common.h"

ESR_CPU_NAMESPACE_BEGIN
namespace {

// Element (n, c, y, x) of a float32 tensor through its strides (int64 offsets).
struct Strided {
  const float* p = nullptr;
  int64_t sn = 0, sc = 0, sh = 0, sw = 0;
  Strided() = default;
  explicit Strided(const at::Tensor& t)
      : p(t.data_ptr<float>()), sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
  float operator()(int64_t n, int64_t c, int64_t y, int64_t x) const { return p[n * sn + c * sc + y * sh + x * sw]; }
};

// A float32 view of t with t's strides where it is already float32 (no copy).
at::Tensor as_f32(const at::Tensor& t) { return t.to(at::kFloat); }

at::Tensor weight(const at::Tensor& t, at::IntArrayRef shape, const char* op, const char* name) {
  TORCH_CHECK(t.numel() == c10::multiply_integers(shape), op, ": ", name, " must have ", c10::multiply_integers(shape),
              " elements ", shape, ", got ", t.sizes());
  return t.to(at::kFloat).reshape(shape).contiguous();
}

void check_x(const at::Tensor& x, const char* op) {
  TORCH_CHECK(x.dim() == 4 && x.device().is_cpu(), op, ": expected a CPU (N, C, H, W) tensor, got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), op, ": expected a floating-point x, got ", x.scalar_type());
}

Strided residual_of(const c10::optional<at::Tensor>& residual, const at::Tensor& x, at::Tensor& keep, const char* op) {
  if (!residual.has_value() || !residual->defined()) return {};
  TORCH_CHECK(residual->sizes() == x.sizes(), op, ": residual ", residual->sizes(), " must be shaped like x ", x.sizes());
  keep = as_f32(*residual);
  return Strided(keep);
}

}  // namespace

at::Tensor bsb(const at::Tensor& x_in, const at::Tensor& pw_weight, const at::Tensor& dw_weight,
               const at::Tensor& dw_bias, const c10::optional<at::Tensor>& residual) {
  check_x(x_in, "bsb");
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  TORCH_CHECK(H >= 2 && W >= 2, "bsb: reflect padding needs H, W >= 2, got ", H, "x", W);
  const at::Tensor x = as_f32(x_in), pw = weight(pw_weight, {C, C}, "bsb", "pw_weight"),
                   dw = weight(dw_weight, {C, 9}, "bsb", "dw_weight"), db = weight(dw_bias, {C}, "bsb", "dw_bias");
  at::Tensor res_keep;
  const Strided X(x), R = residual_of(residual, x_in, res_keep, "bsb");
  at::Tensor out = empty_nhwc(N, C, H, W, x);
  float* O = out.data_ptr<float>();
  const bool launched = esr_channels::bsb(C, [&](auto c) {
    constexpr int kC = decltype(c)::value;
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / H, y = row % H;
        for (int64_t xx = 0; xx < W; ++xx) {
          float* o = O + ((n * H + y) * W + xx) * kC;
          const auto load = [&](int ch, int64_t iy, int64_t ix) { return X(n, ch, iy, ix); };
          const auto store = [&](int ch, float v) { o[ch] = R.p ? v + R(n, ch, y, xx) : v; };
          esr_pixel::bsb<kC>(load, pw.data_ptr<float>(), dw.data_ptr<float>(), db.data_ptr<float>(), y, xx, H, W,
                             store);
        }
      }
    });
  });
  TORCH_CHECK(launched, "esr_native::bsb: no kernel for C=", C, "; instantiated for ", esr_channels::kBsb);
  return out;
}

// skip_w (CR, C) and skip_b (CR) are ESA's 1x1 branch already folded with the reduction (by the
// backend, at load, in float64); low (N, CR, hp, wp) the low-resolution branch.
at::Tensor esa_out(const at::Tensor& x_in, const at::Tensor& low_in, const at::Tensor& skip_w,
                   const at::Tensor& skip_b, const at::Tensor& expand_w, const at::Tensor& expand_b,
                   const c10::optional<at::Tensor>& residual) {
  check_x(x_in, "esa_out");
  TORCH_CHECK(low_in.dim() == 4 && low_in.size(0) == x_in.size(0) && low_in.size(2) >= 1 && low_in.size(3) >= 1,
              "esa_out: low must be (N, CR, hp, wp), got ", low_in.sizes());
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3), CR = low_in.size(1);
  const int64_t hp = low_in.size(2), wp = low_in.size(3);
  const at::Tensor x = as_f32(x_in), low = low_in.to(at::kFloat).contiguous();
  const at::Tensor sw = weight(skip_w, {CR, C}, "esa_out", "skip_w"), sb = weight(skip_b, {CR}, "esa_out", "skip_b");
  const at::Tensor ew = weight(expand_w, {C, CR}, "esa_out", "expand_w"),
                   eb = weight(expand_b, {C}, "esa_out", "expand_b");
  at::Tensor res_keep;
  const Strided X(x), R = residual_of(residual, x_in, res_keep, "esa_out");
  // ATen's scale for an output size: in / out.
  const float scale_h = static_cast<float>(hp) / static_cast<float>(H);
  const float scale_w = static_cast<float>(wp) / static_cast<float>(W);
  at::Tensor out = empty_nhwc(N, C, H, W, x);
  float* O = out.data_ptr<float>();
  const float* L = low.data_ptr<float>();
  const bool launched = esr_channels::esa(C, CR, [&](auto c, auto cr) {
    constexpr int kC = decltype(c)::value, kCR = decltype(cr)::value;
    at::parallel_for(0, N * H, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / H, y = row % H;
        const esr_maths::Taps ty = esr_maths::bilinear_taps(y, scale_h, hp);
        for (int64_t xx = 0; xx < W; ++xx) {
          float* o = O + ((n * H + y) * W + xx) * kC;
          const auto load = [&](int ch) { return X(n, ch, y, xx); };
          const auto store = [&](int ch, float v) { o[ch] = R.p ? v + R(n, ch, y, xx) : v; };
          esr_pixel::esa_tail<kC, kCR>(load, L + n * kCR * hp * wp, hp, wp, ty,
                                       esr_maths::bilinear_taps(xx, scale_w, wp), sw.data_ptr<float>(),
                                       sb.data_ptr<float>(), ew.data_ptr<float>(), eb.data_ptr<float>(), store);
        }
      }
    });
  });
  TORCH_CHECK(launched, "esr_native::esa_out: no kernel for (C, CR)=(", C, ", ", CR, "); instantiated for ",
              esr_channels::kEsa);
  return out;
}

at::Tensor la_reduce(const at::Tensor& x_in, const at::Tensor& reduce_w, const at::Tensor& reduce_b) {
  check_x(x_in, "la_reduce");
  const int64_t N = x_in.size(0), C = x_in.size(1), H = x_in.size(2), W = x_in.size(3), CR = reduce_b.numel();
  TORCH_CHECK(H >= kPoolKernel && W >= kPoolKernel, "la_reduce: input ", H, "x", W, " is smaller than the ",
              kPoolKernel, "x", kPoolKernel, " window");
  const int64_t Hp = pooled_size(H), Wp = pooled_size(W);
  const at::Tensor x = as_f32(x_in), w = weight(reduce_w, {CR, C}, "la_reduce", "reduce_w"),
                   b = weight(reduce_b, {CR}, "la_reduce", "reduce_b");
  const Strided X(x);
  at::Tensor out = empty_nhwc(N, CR, Hp, Wp, x);
  float* O = out.data_ptr<float>();
  const bool launched = esr_channels::la(C, CR, [&](auto c, auto cr) {
    constexpr int kC = decltype(c)::value, kCR = decltype(cr)::value;
    at::parallel_for(0, N * Hp, 1, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t n = row / Hp, py = row % Hp;
        for (int64_t px = 0; px < Wp; ++px) {
          float* o = O + ((n * Hp + py) * Wp + px) * kCR;
          const auto load = [&](int ch, int64_t iy, int64_t ix) { return X(n, ch, iy, ix); };
          const auto store = [&](int r, float v) { o[r] = v; };
          esr_pixel::la_reduce<kC, kCR>(load, w.data_ptr<float>(), b.data_ptr<float>(), py, px, store);
        }
      }
    });
  });
  TORCH_CHECK(launched, "esr_native::la_reduce: no kernel for (C, CR)=(", C, ", ", CR, "); instantiated for ",
              esr_channels::kLa);
  return out;
}

ESR_CPU_NAMESPACE_END
