// Dense 3x3 convolution (stride 1, zero padding 1) by Winograd F(2x2, 3x3), float32,
// channels_last, with the bias / activation / residual epilogue fused.
//
// Why Winograd: oneDNN's direct 3x3 convolutions already run these layers at ~90% of this
// machine's float32 FMA peak, so only fewer multiplications can make them faster. F(2x2, 3x3)
// computes each 2x2 output tile with 16 products per (input, output) channel pair instead of
// 36 (2.25x fewer). Its float32 error matches direct convolution's (measured on RLFN's weights:
// 5.6e-6 vs 5.8e-6 max abs at output scale 18, against float64); F(4x4, 3x3) was 5x worse and
// would not hold the 1e-5 end-to-end bar, so it is not used.
//
// Per work unit (one image, one row of 2x2 tiles, a strip of up to kStrip tiles):
//   1. V[pos][tile][ci] = (B^T d B)[pos] for each tile's 4x4 input patch d (all in L1/L2; the
//      row pass shared by neighbouring tiles);
//   2. M[pos] = V[pos] (tiles x Cin) @ U[pos] (Cin x Cout) for the 16 positions (micro-kernel);
//   3. y = A^T M A per tile into a strip buffer, then the conv epilogue (epilogue.h: bias,
//      activation, partial channels, residual or gated residual, shortcut + pixel shuffle)
//      from it into the output.
// U = G g G^T is computed once at load (esr_kernels/cpu_backend.py, in float64).
#include "epilogue.h"
#include "gemm.h"
#include "gemm_bf16.h"
#include "simd.h"

ESR_CPU_NAMESPACE_BEGIN

#if defined(ESR_HAVE_CONV_ENGINE)

namespace {

constexpr int64_t kStrip = 2 * kRows;  // tiles per work unit: two micro-kernel row blocks

struct AlignedBuffer {
  float* data = nullptr;
  explicit AlignedBuffer(int64_t floats) {
    TORCH_CHECK(posix_memalign(reinterpret_cast<void**>(&data), 64, floats * sizeof(float)) == 0,
                "winograd: out of memory");
    std::memset(data, 0, floats * sizeof(float));
  }
  ~AlignedBuffer() { std::free(data); }
};

// B^T d B, split into its two passes so that neighbouring tiles (which share two input
// columns) share the first: the row pass runs once per input column of the strip, the column
// pass once per tile (half the loads and adds of transforming each 4x4 patch on its own).
//
// Row pass, for every 16-channel slice: input columns xs .. xs + ncols - 1 of rows y0 .. y0 + 3
// (pixel stride ldx floats; outside the image: zero) -> T[slice][col][i] = (B^T d)[i] for each
// column, slices kSliceFloats apart. Channels run fastest, so each input row is read as one
// contiguous run (slice by slice, as before, the strided loads waited on memory for half the
// transforms' time: perf, 48 channels at 256x256).
constexpr int64_t kSliceFloats = (2 * kStrip + 2) * 4 * kLanes;

ESR_INLINE void row_pass(const float* Xn, int64_t W, int64_t H, int64_t ldx, int64_t y0, int64_t xs, int64_t ncols,
                         int64_t Cin, float* T) {
  const float* row[4];
  bool row_ok[4];
  for (int i = 0; i < 4; ++i) {
    const int64_t yy = y0 + i;
    row_ok[i] = yy >= 0 && yy < H;
    row[i] = Xn + (row_ok[i] ? yy : 0) * W * ldx;
  }
  for (int64_t col = 0; col < ncols; ++col) {
    const int64_t xx = xs + col;
    const bool ok = xx >= 0 && xx < W;
    const int64_t off = (ok ? xx : 0) * ldx;
    for (int64_t c = 0, slice = 0; c < Cin; c += kLanes, ++slice) {
      const Mask16 cmask = ok ? lane_mask(Cin - c) : no_lanes();
      Vec16 d[4];
      for (int i = 0; i < 4; ++i) d[i] = load_masked(row[i] + off + c, row_ok[i] ? cmask : no_lanes());
      float* t = T + slice * kSliceFloats + col * 4 * kLanes;
      store_aligned(t + 0 * kLanes, d[0] - d[2]);
      store_aligned(t + 1 * kLanes, d[1] + d[2]);
      store_aligned(t + 2 * kLanes, d[2] - d[1]);
      store_aligned(t + 3 * kLanes, d[1] - d[3]);
    }
  }
}

// Column pass for one tile: T at the tile's first column -> V[4 i + j] = (B^T d B)[i][j].
ESR_INLINE void column_pass(const float* T, float* V, int64_t pos_stride) {
  for (int i = 0; i < 4; ++i) {
    const Vec16 a = load_aligned(T + (0 * 4 + i) * kLanes), b = load_aligned(T + (1 * 4 + i) * kLanes),
                c = load_aligned(T + (2 * 4 + i) * kLanes), d = load_aligned(T + (3 * 4 + i) * kLanes);
    store_aligned(V + (i * 4 + 0) * pos_stride, a - c);
    store_aligned(V + (i * 4 + 1) * pos_stride, b + c);
    store_aligned(V + (i * 4 + 2) * pos_stride, c - b);
    store_aligned(V + (i * 4 + 3) * pos_stride, b - d);
  }
}

#if defined(ESR_HAVE_BF16_ENGINE)
// The column pass writing V in bf16 (the A operand of the bf16 GEMM; pos_stride in elements).
ESR_INLINE void column_pass_bf16(const float* T, bf16_t* V, int64_t pos_stride) {
  for (int i = 0; i < 4; ++i) {
    const __m512 a = _mm512_load_ps(T + (0 * 4 + i) * kLanes), b = _mm512_load_ps(T + (1 * 4 + i) * kLanes),
                 c = _mm512_load_ps(T + (2 * 4 + i) * kLanes), d = _mm512_load_ps(T + (3 * 4 + i) * kLanes);
    store_bf16(V + (i * 4 + 0) * pos_stride, _mm512_sub_ps(a, c));
    store_bf16(V + (i * 4 + 1) * pos_stride, _mm512_add_ps(b, c));
    store_bf16(V + (i * 4 + 2) * pos_stride, _mm512_sub_ps(c, b));
    store_bf16(V + (i * 4 + 3) * pos_stride, _mm512_sub_ps(b, d));
  }
}
#endif

// A^T m A (+ bias is left to the epilogue) for one 16-channel slice of one tile.
ESR_INLINE void output_transform(const float* M, int64_t pos_stride, Vec16 y[2][2]) {
  Vec16 m[4][4];
  for (int p = 0; p < 16; ++p) m[p / 4][p % 4] = load_aligned(M + p * pos_stride);
  Vec16 s[2][4];
  for (int j = 0; j < 4; ++j) {
    s[0][j] = (m[0][j] + m[1][j]) + m[2][j];
    s[1][j] = (m[1][j] - m[2][j]) - m[3][j];
  }
  for (int i = 0; i < 2; ++i) {
    y[i][0] = (s[i][0] + s[i][1]) + s[i][2];
    y[i][1] = (s[i][1] - s[i][2]) - s[i][3];
  }
}

// M[pos] = V[pos] (tiles x Cin) @ U[pos] (Cin x CoutP) for the 16 positions; V and U float32,
// or (bf16) V's rows of CinP bf16 and U's bf16 pairs. Only M's first n_cols columns are written
// (the conv's channels rounded up to 8: the GEMM's last vector can be half width).
// With brg (ESR_CPU_GEMM=brgemm, bf16 only): one brgemm call per position over the tiles.
void winograd_gemms(const float* V, const void* U, bool bf16, const BrgemmWeights* brg, int64_t Cin,
                    int64_t CinP, int64_t CoutP, int64_t n_cols, int64_t tiles, float* M) {
  const int64_t v_pos = kStrip * CinP, m_pos = kStrip * CoutP;
#if defined(ESR_HAVE_BF16_ENGINE)
  if (brg != nullptr) {
    for (int64_t pos = 0; pos < 16; ++pos)
      brg->gemm(pos, reinterpret_cast<const bf16_t*>(V) + pos * v_pos, CinP, tiles, M + pos * m_pos, CoutP, false);
    return;
  }
#endif
  for (int64_t pos = 0; pos < 16; ++pos)
    for (int64_t r0 = 0; r0 < tiles; r0 += kRows) {  // rows past `tiles` hold stale finite values
      float* m = M + pos * m_pos + r0 * CoutP;
#if defined(ESR_HAVE_BF16_ENGINE)
      if (bf16) {
        const int64_t K2 = (Cin + 1) / 2;
        gemm_bf16_8rows(reinterpret_cast<const bf16_t*>(V) + pos * v_pos + r0 * CinP, CinP,
                        static_cast<const bf16_t*>(U) + pos * K2 * 2 * CoutP, 2 * CoutP, K2, m, CoutP, n_cols, false);
        continue;
      }
#endif
      gemm_8rows(V + pos * v_pos + r0 * CinP, CinP, static_cast<const float*>(U) + pos * Cin * CoutP, CoutP, Cin,
                 m, CoutP, n_cols, false);
    }
}

}  // namespace

// The packed weight u: float32 (16, Cin, CoutP), or bf16 pairs (16, ceil(Cin / 2), 2 CoutP)
// (gemm_bf16.h's B layout) for the bf16 GEMM. Returns (CoutP, whether bf16).
static std::pair<int64_t, bool> check_winograd_weight(const at::Tensor& u, int64_t Cin, int64_t c_conv, int64_t n_bias) {
  const bool bf16 = u.scalar_type() == at::kBFloat16;
  TORCH_CHECK(u.dim() == 3 && u.size(0) == 16, "conv3x3_winograd: u must be (16, Cin, CoutP) or bf16 pairs");
#if !defined(ESR_HAVE_BF16_ENGINE)
  TORCH_CHECK(!bf16, "conv3x3_winograd: bf16 weights need the avx512_bf16 ISA level (see `esr backends`)");
#endif
  const int64_t CoutP = bf16 ? u.size(2) / 2 : u.size(2);
  TORCH_CHECK(u.size(1) == (bf16 ? (Cin + 1) / 2 : Cin), "conv3x3_winograd: u has ", u.size(1),
              bf16 ? " channel pairs" : " input channels", ", x has ", Cin, " channels");
  TORCH_CHECK(CoutP % kLanes == 0 && c_conv <= CoutP && CoutP < c_conv + kLanes && n_bias == CoutP,
              "conv3x3_winograd: bad packed output channels");
  return {CoutP, bf16};
}

// x (N, Cin, H, W) (a channel slice of a channels_last tensor is read in place); u = G g G^T
// (check_winograd_weight) with CoutP = c_conv rounded up to 16 (zero columns); bias (CoutP,). The
// conv output's c_conv channels go through the epilogue (epilogue.h) with the remaining arguments.
// With bf16 u, the transformed input V is rounded to bf16 and the 16 GEMMs run in bf16 with
// float32 accumulation; the transforms, the output and the epilogue stay float32.
at::Tensor conv3x3_winograd(const at::Tensor& x_in, const at::Tensor& u_in, const at::Tensor& bias_in,
                            int64_t c_conv, int64_t act, const c10::optional<at::Tensor>& passthrough,
                            int64_t c_out, const c10::optional<at::Tensor>& residual, int64_t residual_mode,
                            const c10::optional<at::Tensor>& att, const c10::optional<at::Tensor>& shortcut,
                            int64_t shortcut_mode, int64_t shuffle) {
  const int64_t N = x_in.size(0), Cin = x_in.size(1), H = x_in.size(2), W = x_in.size(3);
  const auto [CoutP, bf16] = check_winograd_weight(u_in, Cin, c_conv, bias_in.numel());
  int64_t ldx = Cin;
  const at::Tensor x = nhwc_or_slice(x_in, &ldx);  // a partial conv's channel slice: read in place
  at::Tensor u = bf16 ? u_in.contiguous() : u_in.to(at::kFloat).contiguous();
  at::Tensor bias = bias_in.to(at::kFloat).contiguous();
  const ConvEpilogue epi("conv3x3_winograd", N, c_conv, H, W, x, passthrough, c_out, residual, residual_mode, att,
                         shortcut, shortcut_mode, shuffle);
  const int64_t CinP = (Cin + kLanes - 1) / kLanes * kLanes;
  const int64_t TH = (H + 1) / 2, TW = (W + 1) / 2, strips = (TW + kStrip - 1) / kStrip;
  const float* X = x.data_ptr<float>();
  const void* U = u.data_ptr();
  const float* B = bias.data_ptr<float>();
  const int64_t v_pos = kStrip * CinP, m_pos = kStrip * CoutP;  // elements per position
  const int64_t y_row = 2 * kStrip * CoutP;                       // floats per strip output row
  const int64_t n_cols = std::min(CoutP, (c_conv + 7) / 8 * 8);  // M's columns written (the rest stay 0)

  std::vector<std::pair<int64_t, int64_t>> mats;  // the 16 positions' GEMMs (u's layout)
  for (int64_t pos = 0; pos < 16; ++pos) mats.emplace_back(pos * ((Cin + 1) / 2) * 2 * CoutP, (Cin + 1) / 2);
  const auto brg = make_brgemm(bf16, u, CoutP, n_cols, std::move(mats));

  dispatch_act(act, [&](auto act_c) {
    constexpr int64_t ACT = decltype(act_c)::value;
    at::parallel_for(0, N * TH * strips, 1, [&](int64_t begin, int64_t end) {
      const BrgemmDone brgemm_done(brg != nullptr);
      AlignedBuffer vbuf(16 * v_pos), mbuf(16 * m_pos), ybuf(2 * y_row), tbuf(CinP / kLanes * kSliceFloats);
      std::vector<float> scratch(epi.scratch_floats(2 * kStrip));
      for (int64_t unit = begin; unit < end; ++unit) {
        const int64_t n = unit / (TH * strips), ty = unit / strips % TH, tx0 = unit % strips * kStrip;
        const int64_t tiles = std::min(kStrip, TW - tx0);
        const float* Xn = X + n * H * W * ldx;
        row_pass(Xn, W, H, ldx, 2 * ty - 1, 2 * tx0 - 1, 2 * tiles + 2, Cin, tbuf.data);
        for (int64_t c = 0; c < CinP; c += kLanes) {
          for (int64_t t = 0; t < tiles; ++t) {
            const float* T = tbuf.data + c / kLanes * kSliceFloats + 2 * t * 4 * kLanes;
#if defined(ESR_HAVE_BF16_ENGINE)
            if (bf16) {
              column_pass_bf16(T, reinterpret_cast<bf16_t*>(vbuf.data) + t * CinP + c, v_pos);
              continue;
            }
#endif
            column_pass(T, vbuf.data + t * CinP + c, v_pos);
          }
        }
        if (unit + 1 < end) {  // the next unit's rows, while this one's GEMMs run
          const int64_t n2 = (unit + 1) / (TH * strips), ty2 = (unit + 1) / strips % TH;
          const int64_t x0 = std::max<int64_t>(0, 2 * ((unit + 1) % strips * kStrip) - 1);
          const int64_t x1 = std::min(W, 2 * ((unit + 1) % strips * kStrip + kStrip) + 1);
          for (int64_t yy = std::max<int64_t>(0, 2 * ty2 - 1); yy < std::min(H, 2 * ty2 + 3); ++yy)
            prefetch_span(X + ((n2 * H + yy) * W + x0) * ldx, (x1 - x0) * ldx * sizeof(float));
          for (int64_t yy = 2 * ty2; yy < std::min(H, 2 * ty2 + 2); ++yy)
            epi.prefetch((n2 * H + yy) * W + x0 + (x0 > 0), (n2 * H + yy) * W + x1 - (x1 < W));
        }
        winograd_gemms(vbuf.data, U, bf16, brg.get(), Cin, CinP, CoutP, n_cols, tiles, mbuf.data);
        for (int64_t t = 0; t < tiles; ++t)
          for (int64_t c = 0; c < CoutP; c += kLanes) {
            Vec16 yv[2][2];
            output_transform(mbuf.data + t * CoutP + c, m_pos, yv);
            for (int i = 0; i < 2; ++i)
              for (int j = 0; j < 2; ++j) store_aligned(ybuf.data + i * y_row + (2 * t + j) * CoutP + c, yv[i][j]);
          }
        const int64_t oy0 = 2 * ty, ox0 = 2 * tx0, ox1 = std::min(W, 2 * (tx0 + tiles));
        for (int64_t i = 0; i < 2 && oy0 + i < H; ++i)
          epi.segment<ACT>(n, oy0 + i, ox0, ox1, ybuf.data + i * y_row, CoutP, B, scratch.data());
      }
    });
  });
  return epi.out();
}

#else  // below AVX2: the Python side keeps oneDNN's convolutions (no conv engine)

at::Tensor conv3x3_winograd(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                            const c10::optional<at::Tensor>&, int64_t, const c10::optional<at::Tensor>&, int64_t,
                            const c10::optional<at::Tensor>&, const c10::optional<at::Tensor>&, int64_t, int64_t) {
  TORCH_CHECK(false, "conv3x3_winograd: no conv engine at the ISA level running (it needs AVX2; "
              "see `esr backends`)");
}

#endif

ESR_CPU_NAMESPACE_END
