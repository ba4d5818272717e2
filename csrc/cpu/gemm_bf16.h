// The bfloat16 GEMM micro-kernel of the conv engine (AVX512_BF16): C[8 x 16*NV] (+)= A[8 x K] *
// B[K x 16*NV] with bf16 operands and float32 accumulation, through `vdpbf16ps`, which
// multiplies a pair of bf16 products per float32 lane and adds both to the accumulator: twice
// the multiply-adds of a float32 FMA per instruction, and half the bytes of A and B.
//
// Layouts (K counted in pairs, K2 = ceil(K / 2)):
//   A: row r at A + r * lda (bf16 elements), K2 pairs of consecutive channels (2k, 2k + 1), the
//      odd channel past K zero: a pair is broadcast as one 32-bit word.
//   B: "VNNI" pairs: row k2 at B + k2 * ldb holds, for each output column n, the bf16 pair
//      (B[2 k2][n], B[2 k2 + 1][n]) at 2n: 16 columns are one 512-bit load
//      (esr_kernels/packing.py: vnni_pairs).
//   C: float32, row r at C + r * ldc.
#pragma once

#include <ATen/native/CPUBlas.h>

#include <memory>
#include <utility>

#include "brgemm_cache.h"
#include "gemm.h"

#if ESR_CPU_LEVEL >= ESR_LEVEL_AVX512_BF16
#define ESR_HAVE_BF16_ENGINE 1

ESR_CPU_NAMESPACE_BEGIN

using bf16_t = uint16_t;  // raw bfloat16 bits (at::BFloat16's layout)

// gemm_avx512.h's micro-kernel with bf16 operands: a pair of A broadcast as one 32-bit word per
// k step, B rows of 16 pairs per 16 columns, one vdpbf16ps per (row, vector).
struct Bf16Operands {
  using AType = bf16_t;
  using BType = bf16_t;
  using BVec = __m512bh;
  static constexpr int64_t kPack = 2;
  static ESR_INLINE BVec load_b(const bf16_t* p) { return (__m512bh)_mm512_loadu_si512(p); }
  static ESR_INLINE BVec broadcast_a(const bf16_t* p) {
    int32_t pair;
    std::memcpy(&pair, p, sizeof(pair));
    return (__m512bh)_mm512_set1_epi32(pair);
  }
  static ESR_INLINE __m512 madd(__m512 acc, BVec a, BVec b) { return _mm512_dpbf16_ps(acc, a, b); }
  static ESR_INLINE __m512 madd_low_half(__m512 acc, BVec a, BVec b) {
    return _mm512_castps256_ps512(_mm256_dpbf16_ps(_mm512_castps512_ps256(acc),
                                                   (__m256bh)_mm512_castsi512_si256((__m512i)a),
                                                   (__m256bh)_mm512_castsi512_si256((__m512i)b)));
  }
};

// C[8 x n_cols] for any n_cols, as gemm_8rows (gemm_avx512.h); K2 pairs, ldb in bf16 elements.
inline void gemm_bf16_8rows(const bf16_t* A, int64_t lda, const bf16_t* B, int64_t ldb, int64_t K2, float* C,
                            int64_t ldc, int64_t n_cols, bool accumulate) {
  gemm_8rows_of<Bf16Operands>(A, lda, B, ldb, K2, C, ldc, n_cols, accumulate);
}

// 16 floats -> 16 bf16 (round to nearest even), stored at dst.
ESR_INLINE void store_bf16(bf16_t* dst, __m512 v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), (__m256i)_mm512_cvtneps_pbh(v));
}

// Rows of float32 activations (row r: K floats at src + r * lds) -> bf16 rows of 2 * K2
// elements at dst + r * ldd, the odd channel past K zero: the A operand of gemm_bf16_8rows.
inline void rows_to_bf16(const float* src, int64_t lds, int64_t rows, int64_t K, bf16_t* dst, int64_t ldd) {
  const int64_t K2 = (K + 1) / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * lds;
    bf16_t* d = dst + r * ldd;
    for (int64_t k = 0; k < 2 * K2; k += kLanes) {
      const int64_t n = std::min<int64_t>(kLanes, K - k);
      const __m512 v = _mm512_maskz_loadu_ps(n > 0 ? lane_mask(n) : 0, s + k);
      const int64_t m = std::min<int64_t>(kLanes, 2 * K2 - k);
      _mm256_mask_storeu_epi16(d + k, lane_mask(m), (__m256i)_mm512_cvtneps_pbh(v));
    }
  }
}

// C[rows x n_cols] (+)= bf16(A) @ B for float32 A rows (K floats at stride lda): blocks of 8 rows
// converted to bf16 in `scratch` (the last block zero-padded), then gemm_bf16_8rows.
inline void gemm_bf16_rows(const float* A, int64_t lda, int64_t rows, const bf16_t* B, int64_t ldb, int64_t K,
                           float* C, int64_t ldc, int64_t n_cols, bool accumulate, std::vector<bf16_t>& scratch,
                           std::vector<float>& c_scratch) {
  const int64_t K2 = (K + 1) / 2, ld = 2 * K2;
  scratch.resize(kRows * ld);
  for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
    const int64_t n = std::min(kRows, rows - r0);
    if (n < kRows) std::fill(scratch.begin(), scratch.end(), bf16_t{0});
    rows_to_bf16(A + r0 * lda, lda, n, K, scratch.data(), ld);
    if (n == kRows) {
      gemm_bf16_8rows(scratch.data(), ld, B, ldb, K2, C + r0 * ldc, ldc, n_cols, accumulate);
      continue;
    }
    c_scratch.assign(kRows * n_cols, 0.0f);  // a partial block: C through a padded copy
    for (int64_t r = 0; r < n && accumulate; ++r)
      std::copy(C + (r0 + r) * ldc, C + (r0 + r) * ldc + n_cols, c_scratch.data() + r * n_cols);
    gemm_bf16_8rows(scratch.data(), ld, B, ldb, K2, c_scratch.data(), n_cols, n_cols, accumulate);
    for (int64_t r = 0; r < n; ++r)
      std::copy(c_scratch.data() + r * n_cols, c_scratch.data() + (r + 1) * n_cols, C + (r0 + r) * ldc);
  }
}

// ---- oneDNN's batch-reduce GEMM through ATen (ESR_CPU_GEMM=brgemm; isa.h: bf16_gemm)
// The same products with float32 accumulation as gemm_bf16_8rows, by
// at::native::cpublas::brgemm: AMX tiles on a CPU that has them, vdpbf16ps otherwise (there it
// reads this file's B layout as is: oneDNN's VNNI pairs). Where oneDNN wants B repacked
// (cpublas::could_pack: AMX) each matrix is packed by cpublas::pack, in panels of at most 64
// columns (its leading dimensions are 16, 32, 48 or 64), once per weight tensor
// (brgemm_cache.h).

// The B operands of one weight's bf16 GEMMs: matrices of this file's layout (K2 pair-rows of
// 2 * ldn bf16, `n_cols` columns used), made once per weight (make_brgemm) and shared by the
// threads of every op call that uses it.
class BrgemmWeights {
 public:
  static constexpr int64_t kPanel = 64;  // columns per brgemm call

  // mats: (first element, K2) of each matrix within B.
  BrgemmWeights(const bf16_t* B, int64_t ldn, int64_t n_cols, std::vector<std::pair<int64_t, int64_t>> mats)
      : B_(B), ldn_(ldn), n_cols_(n_cols), mats_(std::move(mats)),
        packed_(at::native::cpublas::could_pack(at::kBFloat16)) {
    if (packed_) pack_all();
  }

  int64_t bytes() const { return static_cast<int64_t>(packs_.size() * sizeof(bf16_t)); }

  // C[M x n_cols] (+)= A[M x 2 K2] @ matrix m, A bf16 rows at stride lda (the odd channel past
  // K zero, as for gemm_bf16_8rows), C float32 rows at stride ldc.
  void gemm(int64_t m, const bf16_t* A, int64_t lda, int64_t M, float* C, int64_t ldc, bool accumulate) const {
    const int64_t K2 = mats_[m].second;
    for (int64_t col0 = 0, p = 0; col0 < n_cols_; col0 += kPanel, ++p) {
      const int64_t n = std::min(kPanel, n_cols_ - col0);
      const bf16_t* b = packed_ ? packs_.data() + (m * panels() + p) * panel_elems(K2_max_)
                                : B_ + mats_[m].first + 2 * col0;
      at::native::cpublas::brgemm(M, n, 2 * K2, lda, packed_ ? round16(n) : ldn_, ldc, accumulate,
                                  reinterpret_cast<const at::BFloat16*>(A), reinterpret_cast<const at::BFloat16*>(b),
                                  C + col0, true);
    }
  }

 private:
  static int64_t round16(int64_t n) { return (n + 15) / 16 * 16; }
  int64_t panels() const { return (n_cols_ + kPanel - 1) / kPanel; }
  // Room for one packed panel: K rounded up to oneDNN's largest K block (32 pairs), 64 columns.
  static int64_t panel_elems(int64_t K2) { return (2 * K2 + 63) / 64 * 64 * kPanel; }

  void pack_all() {
    for (const auto& mat : mats_) K2_max_ = std::max(K2_max_, mat.second);
    packs_.assign(mats_.size() * panels() * panel_elems(K2_max_), bf16_t{0});
    std::vector<bf16_t> plain;
    for (size_t m = 0; m < mats_.size(); ++m)
      for (int64_t col0 = 0, p = 0; col0 < n_cols_; col0 += kPanel, ++p) {
        const int64_t n = std::min(kPanel, n_cols_ - col0), K = 2 * mats_[m].second;
        plain.assign(K * n, bf16_t{0});  // this file's pairs back to plain (K x n) rows
        const bf16_t* src = B_ + mats_[m].first;
        for (int64_t k = 0; k < K; ++k)
          for (int64_t j = 0; j < n; ++j) plain[k * n + j] = src[k / 2 * 2 * ldn_ + 2 * (col0 + j) + k % 2];
        at::native::cpublas::pack(K, n, n, round16(n), at::kBFloat16, at::kBFloat16, plain.data(),
                                  packs_.data() + (m * panels() + p) * panel_elems(K2_max_));
      }
  }

  const bf16_t* B_;
  int64_t ldn_, n_cols_, K2_max_ = 0;
  std::vector<std::pair<int64_t, int64_t>> mats_;
  bool packed_;
  std::vector<bf16_t> packs_;
};

// gemm_bf16_rows through brgemm: float32 A rows (K floats at stride lda) rounded to bf16 in
// `scratch`, then one call per panel over all `rows`.
inline void brgemm_rows(const BrgemmWeights& bw, int64_t m, const float* A, int64_t lda, int64_t rows, int64_t K,
                        float* C, int64_t ldc, bool accumulate, std::vector<bf16_t>& scratch) {
  const int64_t ld = 2 * ((K + 1) / 2);
  scratch.resize(rows * ld);
  rows_to_bf16(A, lda, rows, K, scratch.data(), ld);
  bw.gemm(m, scratch.data(), ld, rows, C, ldc, accumulate);
}


// direct_bf16.cpp: a 3x3 conv of bf16 weights as one GEMM over the 9 taps per output segment,
// its input rows rounded to bf16 per thread (conv3x3_im2col's arguments, checked there;
// conv3x3_im2col runs it for bf16 weights).
at::Tensor conv3x3_direct_bf16(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias, int64_t stride,
                               int64_t padding, int64_t c_conv, int64_t act, const c10::optional<at::Tensor>& passthrough,
                               int64_t c_out, const c10::optional<at::Tensor>& residual, int64_t residual_mode,
                               const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& shortcut,
                               int64_t shortcut_mode, int64_t shuffle);

ESR_CPU_NAMESPACE_END
#endif  // ESR_CPU_LEVEL >= ESR_LEVEL_AVX512_BF16

ESR_CPU_NAMESPACE_BEGIN
#if !defined(ESR_HAVE_BF16_ENGINE)
// Below avx512_bf16 there are no bf16 GEMMs: never made (make_brgemm returns null).
struct BrgemmWeights {
  void gemm(int64_t, const uint16_t*, int64_t, int64_t, float*, int64_t, bool) const {}
};
#endif

// The brgemm B operands of an op's bf16 weight `w` (ldn, n_cols and mats as BrgemmWeights'),
// when ESR_CPU_GEMM chose brgemm (isa.h: bf16_gemm) and the weight is bf16; null otherwise (the
// op runs gemm_bf16.h's own micro-kernel, or float32). Made once per weight tensor and kept
// (brgemm_cache.h): on AMX the repacking is not paid again on every call.
inline std::shared_ptr<const BrgemmWeights> make_brgemm(bool bf16, const at::Tensor& w, int64_t ldn, int64_t n_cols,
                                                        std::vector<std::pair<int64_t, int64_t>> mats) {
#if defined(ESR_HAVE_BF16_ENGINE)
  if (bf16 && bf16_gemm() == kBf16GemmBrgemm) {
    const BrgemmKey key{ESR_CPU_LEVEL, ldn, n_cols, mats};
    const auto* B = static_cast<const uint16_t*>(w.data_ptr());
    return std::static_pointer_cast<const BrgemmWeights>(brgemm_cached(w, key, [&] {
      auto made = std::make_shared<const BrgemmWeights>(B, ldn, n_cols, std::move(mats));
      const int64_t bytes = made->bytes();
      return std::make_pair(std::static_pointer_cast<const void>(std::move(made)), bytes);
    }));
  }
#endif
  return nullptr;
}

// At the end of a thread's share of an op that ran brgemm: releases oneDNN's per-thread
// hardware context (AMX's tile configuration).
struct BrgemmDone {
  bool used;
  explicit BrgemmDone(bool u) : used(u) {}
  ~BrgemmDone() {
    if (used) at::native::cpublas::brgemm_release(true);
  }
};
ESR_CPU_NAMESPACE_END
