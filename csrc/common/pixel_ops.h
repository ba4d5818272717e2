// The per-pixel bodies of the single-kernel ops (esr_native::bsb, esa_out, la_reduce), shared
// by the CUDA kernels (one thread per pixel, csrc/cuda/*.cu) and their CPU versions (a loop over
// pixels, csrc/cpu/pixel_ops.cpp): the CPU build runs every arithmetic line of the GPU kernels.
//
// Channel counts are template parameters so that, once the loops are unrolled, the per-pixel
// arrays (float[C], float[CR]) live in registers: no stack frame on the GPU.
//
// Memory access goes through functors, so each side chooses its storage type and layout:
//   load(c, y, x) -> float   the input at channel c, row y, column x of this pixel's image
//   store(c, v)               writes output channel c of this pixel (adds a residual if any)
// Weights are float32 row-major pointers (shared memory on the GPU).
#pragma once

#include "maths.h"

namespace esr_pixel {

using esr_maths::Taps;

// BSB at output pixel (y, x): GELU(depthwise3x3_reflect(pointwise1x1(in)) + db).
// pw (C, C) [out][in]; dw (C, 9) taps row-major; db (C). H, W >= 2. The pointwise output of
// each of the 9 reflected neighbours is recomputed (C x C MACs) rather than stored.
template <int C, typename Load, typename Store>
ESR_HD void bsb(const Load& load, const float* pw, const float* dw, const float* db, int64_t y, int64_t x,
                int64_t H, int64_t W, const Store& store) {
  float acc[C];
  ESR_UNROLL
  for (int c = 0; c < C; ++c) acc[c] = db[c];
  ESR_NO_UNROLL
  for (int tap = 0; tap < 9; ++tap) {
    esr_maths::reload_weights_barrier();
    const int64_t iy = esr_maths::reflect(y + tap / 3 - 1, H), ix = esr_maths::reflect(x + tap % 3 - 1, W);
    float in[C];
    ESR_UNROLL
    for (int c = 0; c < C; ++c) in[c] = load(c, iy, ix);
    ESR_UNROLL
    for (int co = 0; co < C; ++co) {
      float p = 0.0f;
      ESR_UNROLL
      for (int ci = 0; ci < C; ++ci) p = fmaf(pw[co * C + ci], in[ci], p);
      acc[co] = fmaf(p, dw[co * 9 + tap], acc[co]);
    }
  }
  ESR_UNROLL
  for (int c = 0; c < C; ++c) store(c, esr_maths::gelu(acc[c]));
}

// ESA's full-resolution tail at one pixel: x * sigmoid(expand(up(low) + skip(x))).
// low: this image's (CR, hp, wp) float32 contiguous low-resolution map; ty, tx: the pixel's
// bilinear taps into it. skip_w (CR, C), skip_b (CR): the 1x1 branch already folded with the
// reduction (at load, in float64: packing.fold_esa_skip); expand_w (C, CR), expand_b (C).
template <int C, int CR, typename Load, typename Store>
ESR_HD void esa_tail(const Load& load, const float* low, int64_t hp, int64_t wp, const Taps& ty, const Taps& tx,
                     const float* skip_w, const float* skip_b, const float* expand_w, const float* expand_b,
                     const Store& store) {
  float xv[C];
  ESR_UNROLL
  for (int c = 0; c < C; ++c) xv[c] = load(c);
  float u[CR];
  ESR_UNROLL
  for (int r = 0; r < CR; ++r) {
    float t = skip_b[r];
    ESR_UNROLL
    for (int c = 0; c < C; ++c) t = fmaf(skip_w[r * C + c], xv[c], t);
    u[r] = esr_maths::bilinear(low + r * hp * wp, wp, ty, tx) + t;
  }
  ESR_UNROLL
  for (int c = 0; c < C; ++c) {
    float s = expand_b[c];
    ESR_UNROLL
    for (int r = 0; r < CR; ++r) s = fmaf(expand_w[c * CR + r], u[r], s);
    store(c, xv[c] * esr_maths::sigmoid(s));
  }
}

// LocalAttention reduction at pooled pixel (py, px): max over the kPoolKernel^2 window at
// (py, px) * kPoolStride of the 1x1 conv w (CR, C) in + b (CR). The bias is added after the
// max: max(v) + b == max(v + b) because float rounding is monotonic.
template <int C, int CR, typename Load, typename Store>
ESR_HD void la_reduce(const Load& load, const float* w, const float* b, int64_t py, int64_t px, const Store& store) {
  constexpr int K = esr_spec::kPoolKernel, S = esr_spec::kPoolStride;
  float best[CR];
  ESR_UNROLL
  for (int r = 0; r < CR; ++r) best[r] = -INFINITY;
  ESR_NO_UNROLL
  for (int k = 0; k < K * K; ++k) {
    esr_maths::reload_weights_barrier();
    const int64_t iy = py * S + k / K, ix = px * S + k % K;
    float in[C];
    ESR_UNROLL
    for (int c = 0; c < C; ++c) in[c] = load(c, iy, ix);
    ESR_UNROLL
    for (int r = 0; r < CR; ++r) {
      float v = 0.0f;
      ESR_UNROLL
      for (int c = 0; c < C; ++c) v = fmaf(w[r * C + c], in[c], v);
      best[r] = esr_maths::nan_max(best[r], v);
    }
  }
  ESR_UNROLL
  for (int r = 0; r < CR; ++r) store(r, best[r] + b[r]);
}

}  // namespace esr_pixel
