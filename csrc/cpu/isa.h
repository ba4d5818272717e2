// Run-time ISA dispatch of the CPU kernels: the levels, and the table of kernel entry points
// that each compiled level provides (kernel_table.cpp, compiled once per level) and
// dispatch.cpp chooses from at run time (the CPU's features, ESR_CPU_ISA).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

// ISA levels, ascending: a CPU that has a level has every lower one.
#define ESR_LEVEL_BASELINE 0     // the compiler's default target (x86-64; any aarch64)
#define ESR_LEVEL_AVX2 1         // AVX2 + FMA (+ F16C)
#define ESR_LEVEL_AVX512 2       // AVX-512 F, BW, VL, DQ
#define ESR_LEVEL_AVX512_BF16 3  // + AVX512_BF16: the bf16 GEMM of the conv engine (gemm_bf16.h)
#define ESR_LEVEL_AMX 4          // + AMX tiles (no kernels of its own yet: runs the avx512_bf16 ones)

namespace esr_cpu {

using OptTensor = c10::optional<at::Tensor>;

// One compiled level's kernels (the ops of registration.cpp).
struct KernelTable {
  const char* name;  // the namespace: baseline, avx2, avx512, avx512_bf16, arch
  int level;         // its ESR_LEVEL_*
  bool conv_engine;  // conv3x3_winograd, conv1x1, esa_gate_1x1, conv3x3_im2col, bsb_packed run (else they raise)
  at::Tensor (*bsb_dw)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
  at::Tensor (*gate)(const at::Tensor&, const at::Tensor&);
  at::Tensor (*conv_epilogue)(const at::Tensor&, const OptTensor&, int64_t, int64_t, const OptTensor&, int64_t,
                              const OptTensor&, const OptTensor&, int64_t, int64_t);
  at::Tensor (*esa_tail)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
  at::Tensor (*conv3x3_winograd)(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                                 const OptTensor&, int64_t, const OptTensor&, int64_t, const OptTensor&,
                                 const OptTensor&, int64_t, int64_t);
  at::Tensor (*conv1x1)(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t, int64_t, const OptTensor&,
                        int64_t, const OptTensor&, int64_t, const OptTensor&, const OptTensor&, int64_t, int64_t);
  at::Tensor (*max_pool_7s3)(const at::Tensor&);
  at::Tensor (*bsb_packed)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                           const OptTensor&);
  at::Tensor (*bsb)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
  at::Tensor (*esa_out)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                        const at::Tensor&, const at::Tensor&, const OptTensor&);
  at::Tensor (*la_reduce)(const at::Tensor&, const at::Tensor&, const at::Tensor&);
  at::Tensor (*esa_gate_1x1)(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const OptTensor&, bool);
  at::Tensor (*conv3x3_im2col)(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t,
                               int64_t, int64_t, const OptTensor&, int64_t, const OptTensor&, int64_t, const OptTensor&,
                               const OptTensor&, int64_t, int64_t);
};

// Each compiled level's table (setup.py defines ESR_CPU_HAVE_<level> for the levels it builds).
#define ESR_DECLARE_KERNEL_TABLE(level) \
  namespace level {                     \
  const KernelTable& kernel_table();    \
  }
ESR_DECLARE_KERNEL_TABLE(baseline)
ESR_DECLARE_KERNEL_TABLE(avx2)
ESR_DECLARE_KERNEL_TABLE(avx512)
ESR_DECLARE_KERNEL_TABLE(avx512_bf16)
ESR_DECLARE_KERNEL_TABLE(arch)
#undef ESR_DECLARE_KERNEL_TABLE

// The table of the level that runs (dispatch.cpp); raises, naming the problem, when
// ESR_CPU_ISA asks for a level this CPU or build does not have.
const KernelTable& kernels();

// Which bf16 GEMM the conv engine runs at the levels with one (avx512_bf16, amx): its own
// micro-kernel (gemm_bf16.h), or oneDNN's batch-reduce GEMM through ATen
// (at::native::cpublas::brgemm: AMX tiles on a CPU that has them, vdpbf16ps otherwise). Set
// from Python's parse of ESR_CPU_GEMM (esr_kernels/env.py); dispatch.cpp holds it.
enum : int64_t { kBf16GemmOwn = 0, kBf16GemmBrgemm = 1 };
int64_t bf16_gemm();
void set_bf16_gemm(int64_t kind);

}  // namespace esr_cpu
