// Activations over a span of floats, z[i] = act(z[i]) (+ res[i]): the conv epilogues' and the
// fused BSB's last pass.
//
// GELU, SiLU and sigmoid at AVX-512 are written out with intrinsics: GCC's vectorisation of
// common.h's scalar gelu() (a division, float<->int conversions, blends) cost ~36 cycles per 16
// floats here (a 36-channel 256x256 map: 1.5 ms of a 9 ms bf16 Winograd conv), and IFADNet runs
// 18 of them per image. The formulas are the same (erf by Abramowitz & Stegun 7.1.26, exp by
// Cody-Waite reduction and a degree-6 Taylor polynomial); only the instructions differ: the
// reciprocal by vrcp14ps and one Newton step (relative error ~2^-28, below float32's rounding),
// rounding by vrndscaleps, the scaling by 2^n by vscalefps. Callers pass whole rows, so only a
// row's last vector is partial (per pixel, 36 channels left 4 to scalar code). Other levels and
// activations use common.h's scalar definitions, vectorised by the compiler.
#pragma once

#include "common.h"

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512
#include <immintrin.h>
#endif

ESR_CPU_NAMESPACE_BEGIN

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512
// exp(z), z clamped to [-87, 88] as fast_exp (common.h).
ESR_INLINE __m512 exp16(__m512 z) {
  z = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-87.0f)), _mm512_set1_ps(88.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(z, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), z);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723e-6f), r);
  __m512 p = _mm512_set1_ps(1.0f / 720.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 1 / d by vrcp14ps and one Newton step (relative error ~2^-28).
ESR_INLINE __m512 reciprocal16(__m512 d) {
  const __m512 t = _mm512_rcp14_ps(d);
  return _mm512_fmadd_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(1.0f)), t);
}

// 1 / (1 + exp(-x)), as sigmoid (common.h).
ESR_INLINE __m512 sigmoid16(__m512 x) {
  return reciprocal16(_mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

// erf(x), as fast_erf (common.h).
ESR_INLINE __m512 erf16(__m512 x) {
  const __m512 one = _mm512_set1_ps(1.0f);
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 d = _mm512_fmadd_ps(_mm512_set1_ps(0.3275911f), ax, one);
  const __m512 t = reciprocal16(d);
  __m512 poly = _mm512_set1_ps(1.061405429f);
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-1.453152027f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(1.421413741f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(-0.284496736f));
  poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(0.254829592f));
  const __m512 e = exp16(_mm512_fnmadd_ps(ax, ax, _mm512_setzero_ps()));  // exp(-x^2)
  const __m512 y = _mm512_fnmadd_ps(_mm512_mul_ps(poly, t), e, one);    // in [0, 1]
  const __m512i sign = _mm512_and_si512(_mm512_castps_si512(x), _mm512_set1_epi32(INT32_MIN));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), sign));
}

// 0.5 x (1 + erf(x / sqrt 2)), as gelu (common.h).
ESR_INLINE __m512 gelu16(__m512 x) {
  const __m512 h = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(h, erf16(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f))), h);
}

// What span16 computes from z[i] (and x[i]): an activation code (common.h), or kGate.
constexpr int64_t kGate = -1;  // x * sigmoid(z)

template <int64_t OP>
ESR_INLINE __m512 span_op16(__m512 v, __m512 xv) {
  if constexpr (OP == ACT_GELU) return gelu16(v);
  else if constexpr (OP == ACT_SILU) return _mm512_mul_ps(v, sigmoid16(v));
  else if constexpr (OP == ACT_SIGMOID) return sigmoid16(v);
  else return _mm512_mul_ps(xv, sigmoid16(v));  // kGate
}

// z[i] = OP(z[i], x[i]) (+ res[i]) over a span by 16-float vectors, the last one masked.
template <int64_t OP>
ESR_INLINE void span16(float* z, const float* x, const float* res, int64_t len) {
  for (int64_t i = 0; i < len; i += 16) {
    const __mmask16 m = len - i >= 16 ? static_cast<__mmask16>(0xFFFF)
                                      : static_cast<__mmask16>((1u << (len - i)) - 1u);
    __m512 v = span_op16<OP>(_mm512_maskz_loadu_ps(m, z + i), x ? _mm512_maskz_loadu_ps(m, x + i) : _mm512_setzero_ps());
    if (res) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, res + i));
    _mm512_mask_storeu_ps(z + i, m, v);
  }
}
#endif

// z[i] = x[i] * sigmoid(z[i]) (+ res[i] if res) for i < len: the ESA gate.
inline void sigmoid_gate_span(float* z, const float* x, const float* res, int64_t len) {
#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512
  span16<kGate>(z, x, res, len);
#else
#pragma omp simd
  for (int64_t j = 0; j < len; ++j) z[j] = x[j] * sigmoid(z[j]);
  if (res) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) z[j] += res[j];
  }
#endif
}

// z[i] = act(z[i]) (+ res[i] if res) for i < len.
template <int64_t ACT>
inline void activate_span(float* z, const float* res, int64_t len) {
#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512
  if constexpr (ACT == ACT_GELU || ACT == ACT_SILU || ACT == ACT_SIGMOID) {
    span16<ACT>(z, nullptr, res, len);
    return;
  }
#endif
  if (res) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) z[j] = activate<ACT>(z[j]) + res[j];
  } else if (ACT != ACT_NONE) {
#pragma omp simd
    for (int64_t j = 0; j < len; ++j) z[j] = activate<ACT>(z[j]);
  }
}

ESR_CPU_NAMESPACE_END
