// A 16-float SIMD vector for the conv engine's transforms (winograd.cpp), written once for every
// level that has the engine: one __m512 at AVX-512, two __m256 at AVX2 (+ FMA). 16 floats is
// the engine's packing unit at every level (weights and biases are padded to multiples of 16
// channels, esr_kernels/packing.py), so the layouts do not depend on the level.
#pragma once

#include "common.h"

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX2
#include <immintrin.h>

ESR_CPU_NAMESPACE_BEGIN

constexpr int64_t kLanes = 16;  // floats per Vec16 (and per packed channel block)

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512

struct Vec16 {
  __m512 v;
};
using Mask16 = __mmask16;

// The first `valid` lanes (all of them for valid >= 16; none for valid <= 0).
ESR_INLINE Mask16 lane_mask(int64_t valid) {
  return valid >= kLanes ? static_cast<Mask16>(0xFFFF)
                         : valid <= 0 ? static_cast<Mask16>(0) : static_cast<Mask16>((1u << valid) - 1u);
}
ESR_INLINE Mask16 no_lanes() { return 0; }
ESR_INLINE Vec16 load_masked(const float* p, Mask16 m) { return {_mm512_maskz_loadu_ps(m, p)}; }
ESR_INLINE Vec16 load_aligned(const float* p) { return {_mm512_load_ps(p)}; }
ESR_INLINE void store_aligned(float* p, Vec16 a) { _mm512_store_ps(p, a.v); }
ESR_INLINE Vec16 operator+(Vec16 a, Vec16 b) { return {_mm512_add_ps(a.v, b.v)}; }
ESR_INLINE Vec16 operator-(Vec16 a, Vec16 b) { return {_mm512_sub_ps(a.v, b.v)}; }

#else  // AVX2: two halves

struct Vec16 {
  __m256 lo, hi;
};
// AVX2 masks are per-lane sign bits in integer vectors (_mm256_maskload_ps).
struct Mask16 {
  __m256i lo, hi;
};

ESR_INLINE Mask16 lane_mask(int64_t valid) {
  const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i n = _mm256_set1_epi32(static_cast<int>(std::clamp<int64_t>(valid, 0, kLanes)));
  // lane i is on iff i < valid
  return {_mm256_cmpgt_epi32(n, idx), _mm256_cmpgt_epi32(n, _mm256_add_epi32(idx, _mm256_set1_epi32(8)))};
}
ESR_INLINE Mask16 no_lanes() { return {_mm256_setzero_si256(), _mm256_setzero_si256()}; }
ESR_INLINE Vec16 load_masked(const float* p, Mask16 m) {
  return {_mm256_maskload_ps(p, m.lo), _mm256_maskload_ps(p + 8, m.hi)};
}
ESR_INLINE Vec16 load_aligned(const float* p) { return {_mm256_load_ps(p), _mm256_load_ps(p + 8)}; }
ESR_INLINE void store_aligned(float* p, Vec16 a) {
  _mm256_store_ps(p, a.lo);
  _mm256_store_ps(p + 8, a.hi);
}
ESR_INLINE Vec16 operator+(Vec16 a, Vec16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
ESR_INLINE Vec16 operator-(Vec16 a, Vec16 b) { return {_mm256_sub_ps(a.lo, b.lo), _mm256_sub_ps(a.hi, b.hi)}; }

#endif

ESR_CPU_NAMESPACE_END
#endif  // ESR_CPU_LEVEL >= ESR_LEVEL_AVX2
