// The float32 GEMM micro-kernel of the conv engine at the AVX2 (+ FMA) level, behind the same
// interface as gemm_avx512.h (gemm_8rows, gemm_rows): C[R x 8*NV] (+)= A[R x K] * B[K x 8*NV].
// AVX2 has 16 ymm registers, so a block is at most 12 accumulators (4 rows x 3 vectors, or
// fewer), NV weight vectors and one broadcast: per k, 3 loads + 4 broadcasts feed 12 FMAs.
#pragma once

#include "simd.h"

#if ESR_CPU_LEVEL == ESR_LEVEL_AVX2

ESR_CPU_NAMESPACE_BEGIN

constexpr int64_t kRows = 8;      // rows per gemm_8rows call (the interface of gemm_avx512.h)
constexpr int64_t kBlockRows = 4;  // rows per micro-kernel block
constexpr int64_t kVec = 8;       // float32 lanes of a 256-bit register

// Lanes [0, valid) on, for _mm256_maskload_ps / _mm256_maskstore_ps.
ESR_INLINE __m256i ymm_mask(int64_t valid) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// A: row r at A + r * lda (K floats). B: row k at B + k * ldb, 8 * NV readable floats (zero
// past the real columns). C: row r at C + r * ldc; its last vector holds `last_valid` (1..8)
// real columns, loaded (accumulate) and stored through a mask when that is under 8.
template <int R, int NV>
ESR_INLINE void gemm_block(const float* __restrict A, int64_t lda, const float* __restrict B, int64_t ldb,
                           int64_t K, float* __restrict C, int64_t ldc, bool accumulate, int64_t last_valid) {
  const bool masked = last_valid < kVec;
  const __m256i last = ymm_mask(last_valid);
  __m256 acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      const float* c = C + r * ldc + v * kVec;
      acc[r][v] = !accumulate                   ? _mm256_setzero_ps()
                  : (v == NV - 1 && masked) ? _mm256_maskload_ps(c, last)
                                            : _mm256_loadu_ps(c);
    }
  for (int64_t k = 0; k < K; ++k) {
    __m256 b[NV];
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(B + k * ldb + v * kVec);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + r * lda + k);
#pragma GCC unroll 3
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 3
    for (int v = 0; v < NV; ++v) {
      float* c = C + r * ldc + v * kVec;
      if (v == NV - 1 && masked) _mm256_maskstore_ps(c, last, acc[r][v]);
      else _mm256_storeu_ps(c, acc[r][v]);
    }
}

// C[R x n_cols], any n_cols: column blocks of 3 vectors (24 floats), with a remainder of 4
// vectors split 2 + 2 rather than 3 + 1 (a 1-vector block keeps only 4 accumulators busy).
template <int R>
inline void gemm_cols(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* C, int64_t ldc,
                      int64_t n_cols, bool accumulate) {
  for (int64_t c0 = 0; c0 < n_cols;) {
    const int64_t vecs_left = (n_cols - c0 + kVec - 1) / kVec;
    const int64_t nv = vecs_left == 4 ? 2 : std::min<int64_t>(3, vecs_left);
    const int64_t cols = std::min(nv * kVec, n_cols - c0);
    const int64_t last_valid = cols - (nv - 1) * kVec;
    if (nv == 3) gemm_block<R, 3>(A, lda, B + c0, ldb, K, C + c0, ldc, accumulate, last_valid);
    else if (nv == 2) gemm_block<R, 2>(A, lda, B + c0, ldb, K, C + c0, ldc, accumulate, last_valid);
    else gemm_block<R, 1>(A, lda, B + c0, ldb, K, C + c0, ldc, accumulate, last_valid);
    c0 += cols;
  }
}

// C[8 x n_cols] (+)= A[8 x K] * B[K x n_cols]: two 4-row halves.
inline void gemm_8rows(const float* A, int64_t lda, const float* B, int64_t ldb, int64_t K, float* C,
                       int64_t ldc, int64_t n_cols, bool accumulate) {
  gemm_cols<4>(A, lda, B, ldb, K, C, ldc, n_cols, accumulate);
  gemm_cols<4>(A + 4 * lda, lda, B, ldb, K, C + 4 * ldc, ldc, n_cols, accumulate);
}

// C[rows x n_cols] for any number of rows: 4-row blocks, then the last 1-3 rows by a block of
// that height (no padded copies needed: `scratch` is unused here, kept for the interface).
inline void gemm_rows(const float* A, int64_t lda, int64_t rows, const float* B, int64_t ldb, int64_t K, float* C,
                      int64_t ldc, int64_t n_cols, bool accumulate, std::vector<float>& /*scratch*/) {
  const int64_t full = rows / kBlockRows * kBlockRows;
  for (int64_t r0 = 0; r0 < full; r0 += kBlockRows)
    gemm_cols<4>(A + r0 * lda, lda, B, ldb, K, C + r0 * ldc, ldc, n_cols, accumulate);
  const float* a = A + full * lda;
  float* c = C + full * ldc;
  switch (rows - full) {
    case 3: gemm_cols<3>(a, lda, B, ldb, K, c, ldc, n_cols, accumulate); break;
    case 2: gemm_cols<2>(a, lda, B, ldb, K, c, ldc, n_cols, accumulate); break;
    case 1: gemm_cols<1>(a, lda, B, ldb, K, c, ldc, n_cols, accumulate); break;
    default: break;
  }
}

ESR_CPU_NAMESPACE_END
#endif  // ESR_CPU_LEVEL == ESR_LEVEL_AVX2
