// The register-blocked float32 GEMM micro-kernel behind the CPU convolutions (winograd.cpp,
// conv1x1.cpp): C[8 x 16*NV] (+)= A[8 x K] * B[K x 16*NV], accumulated in float32 AVX-512
// registers (8*NV <= 24 accumulators, NV weight vectors, one broadcast).
#pragma once

#include "simd.h"  // kLanes (16: the float32 lanes of a 512-bit register), lane_mask

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512

ESR_CPU_NAMESPACE_BEGIN

constexpr int64_t kRows = 8;  // rows (pixels or Winograd tiles) per micro-kernel call

// A: rows r at A + r * lda, K contiguous floats each. B: row k at B + k * ldb, 16 * NV floats
// (zero-padded past the real output channels). C: row r at C + r * ldc; the last of the NV
// vectors is stored (and, with accumulate, loaded) through last_mask.
template <int NV>
ESR_INLINE void gemm_8xN(const float* __restrict A, int64_t lda, const float* __restrict B, int64_t ldb,
                         int64_t K, float* __restrict C, int64_t ldc, bool accumulate, __mmask16 last_mask) {
  __m512 acc[kRows][NV];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[r][v] = accumulate ? _mm512_maskz_loadu_ps(v == NV - 1 ? last_mask : 0xFFFF, C + r * ldc + v * kLanes)
                             : _mm512_setzero_ps();
  for (int64_t k = 0; k < K; ++k) {
    __m512 b[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) b[v] = _mm512_loadu_ps(B + k * ldb + v * kLanes);
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      const __m512 a = _mm512_set1_ps(A[r * lda + k]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      _mm512_mask_storeu_ps(C + r * ldc + v * kLanes, v == NV - 1 ? last_mask : 0xFFFF, acc[r][v]);
}

// C[8 x n_cols] for any n_cols: column blocks of up to 48 (3 vectors; 24 accumulators).
inline void gemm_8rows(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* C,
                       int64_t ldc, int64_t n_cols, bool accumulate) {
  for (int64_t c0 = 0; c0 < n_cols; c0 += 3 * kLanes) {
    const int64_t cols = std::min<int64_t>(3 * kLanes, n_cols - c0);
    const int64_t nv = (cols + kLanes - 1) / kLanes;
    const __mmask16 last = lane_mask(cols - (nv - 1) * kLanes);
    if (nv == 3) gemm_8xN<3>(A, lda, B + c0, ldb, K, C + c0, ldc, accumulate, last);
    else if (nv == 2) gemm_8xN<2>(A, lda, B + c0, ldb, K, C + c0, ldc, accumulate, last);
    else gemm_8xN<1>(A, lda, B + c0, ldb, K, C + c0, ldc, accumulate, last);
  }
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
