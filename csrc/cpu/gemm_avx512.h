// The register-blocked float32 GEMM micro-kernel behind the CPU convolutions (winograd.cpp,
// conv1x1.cpp): C[8 x 16*NV] (+)= A[8 x K] * B[K x 16*NV], accumulated in float32 AVX-512
// registers (8*NV <= 24 accumulators, NV weight vectors, one broadcast).
#pragma once

#include "simd.h"  // kLanes (16: the float32 lanes of a 512-bit register), lane_mask

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512

ESR_CPU_NAMESPACE_BEGIN

constexpr int64_t kRows = 8;  // rows (pixels or Winograd tiles) per micro-kernel call

// The operands of the float32 micro-kernel: one float of A broadcast per k step, B rows of 16
// floats per 16 columns, one FMA per (row, vector). (gemm_bf16.h: the bf16 pairs.)
struct F32Operands {
  using AType = float;
  using BType = float;
  using BVec = __m512;
  static constexpr int64_t kPack = 1;  // elements of a row of A (and of a B column) per k step
  static ESR_INLINE BVec load_b(const float* p) { return _mm512_loadu_ps(p); }
  static ESR_INLINE BVec broadcast_a(const float* p) { return _mm512_set1_ps(*p); }
  static ESR_INLINE __m512 madd(__m512 acc, BVec a, BVec b) { return _mm512_fmadd_ps(a, b, acc); }
  static ESR_INLINE __m512 madd_low_half(__m512 acc, BVec a, BVec b) {
    return _mm512_castps256_ps512(
        _mm256_fmadd_ps(_mm512_castps512_ps256(a), _mm512_castps512_ps256(b), _mm512_castps512_ps256(acc)));
  }
};

// C[8 x 16*NV] (+)= A[8 x K] * B[K x 16*NV] for Ops' operands (K in k steps of Ops::kPack
// elements). A: row r at A + r * lda. B: row k at B + k * ldb, 16 * NV columns readable
// (zero-padded past the real output channels). C: float32, row r at C + r * ldc; the last of the
// NV vectors is stored (and, with accumulate, loaded) through last_mask. HALF: the last vector's
// columns all lie in its low 8 lanes, so it is computed with 256-bit instructions (AMD's Zen 4
// executes a 512-bit FMA as two 256-bit halves: IFADNet's 36 channels take 2.5 vectors' work,
// not 3; on Intel's cores the two cost the same).
template <class Ops, int NV, bool HALF>
ESR_INLINE void gemm_8xN(const typename Ops::AType* __restrict A, int64_t lda, const typename Ops::BType* __restrict B,
                         int64_t ldb, int64_t K, float* __restrict C, int64_t ldc, bool accumulate,
                         __mmask16 last_mask) {
  __m512 acc[kRows][NV];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(v == NV - 1 ? last_mask : 0xFFFF, C + r * ldc + v * kLanes)
                             : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    typename Ops::BVec b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = Ops::load_b(B + k * ldb + v * Ops::kPack * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const typename Ops::BVec a = Ops::broadcast_a(A + r * lda + Ops::kPack * k);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v)
        acc[r][v] = (HALF && v == NV - 1) ? Ops::madd_low_half(acc[r][v], a, b[v]) : Ops::madd(acc[r][v], a, b[v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(C + r * ldc + v * kLanes, v == NV - 1 ? last_mask : 0xFFFF, acc[r][v]);
}

// C[8 x n_cols] for any n_cols: column blocks of up to 48 (3 vectors; 24 accumulators), a last
// vector of at most 8 columns in 256-bit halves. ldb in elements of Ops::BType.
template <class Ops>
inline void gemm_8rows_of(const typename Ops::AType* A, int64_t lda, const typename Ops::BType* B, int64_t ldb,
                          int64_t K, float* C, int64_t ldc, int64_t n_cols, bool accumulate) {
  for (int64_t c0 = 0; c0 < n_cols; c0 += 3 * kLanes) {
    const int64_t cols = std::min<int64_t>(3 * kLanes, n_cols - c0);
    const int64_t nv = (cols + kLanes - 1) / kLanes, last_cols = cols - (nv - 1) * kLanes;
    const __mmask16 last = lane_mask(last_cols);
    const auto* b = B + Ops::kPack * c0;
    const bool half = last_cols <= kLanes / 2;
    if (nv == 3 && half) gemm_8xN<Ops, 3, true>(A, lda, b, ldb, K, C + c0, ldc, accumulate, last);
    else if (nv == 3) gemm_8xN<Ops, 3, false>(A, lda, b, ldb, K, C + c0, ldc, accumulate, last);
    else if (nv == 2 && half) gemm_8xN<Ops, 2, true>(A, lda, b, ldb, K, C + c0, ldc, accumulate, last);
    else if (nv == 2) gemm_8xN<Ops, 2, false>(A, lda, b, ldb, K, C + c0, ldc, accumulate, last);
    else if (half) gemm_8xN<Ops, 1, true>(A, lda, b, ldb, K, C + c0, ldc, accumulate, last);
    else gemm_8xN<Ops, 1, false>(A, lda, b, ldb, K, C + c0, ldc, accumulate, last);
  }
}

// The float32 GEMM: C[8 x n_cols] (+)= A[8 x K] * B[K x n_cols].
inline void gemm_8rows(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* C,
                       int64_t ldc, int64_t n_cols, bool accumulate) {
  gemm_8rows_of<F32Operands>(A, lda, B, ldb, K, C, ldc, n_cols, accumulate);
}

// C[rows x n_cols] for any number of rows: blocks of 8, the last partial block through
// zero-padded copies in `scratch`. A rows hold K floats at stride lda.
inline void gemm_rows(const float* A, int64_t lda, int64_t rows, const float* B, int64_t ldb, int64_t K, float* C,
                      int64_t ldc, int64_t n_cols, bool accumulate, std::vector<float>& scratch) {
  const int64_t full = rows / kRows * kRows;
  for (int64_t r0 = 0; r0 < full; r0 += kRows)
    gemm_8rows(A + r0 * lda, lda, B, ldb, K, C + r0 * ldc, ldc, n_cols, accumulate);
  const int64_t tail = rows - full;
  if (tail == 0) return;
  scratch.assign(kRows * (K + n_cols), 0.0f);
  float* a = scratch.data();
  float* c = a + kRows * K;
  for (int64_t r = 0; r < tail; ++r) {
    std::copy(A + (full + r) * lda, A + (full + r) * lda + K, a + r * K);
    if (accumulate) std::copy(C + (full + r) * ldc, C + (full + r) * ldc + n_cols, c + r * n_cols);
  }
  gemm_8rows(a, K, B, ldb, K, c, n_cols, n_cols, accumulate);
  for (int64_t r = 0; r < tail; ++r) std::copy(c + r * n_cols, c + (r + 1) * n_cols, C + (full + r) * ldc);
}

ESR_CPU_NAMESPACE_END
#endif  // ESR_CPU_LEVEL >= ESR_LEVEL_AVX512
