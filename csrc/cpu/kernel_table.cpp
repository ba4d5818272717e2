// This level's kernel table (isa.h): compiled once per ISA level, like every kernel file.
#include "gemm.h"  // ESR_HAVE_CONV_ENGINE at the levels that have the conv engine

ESR_CPU_NAMESPACE_BEGIN

at::Tensor bsb_dw(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
at::Tensor gate(const at::Tensor&, const at::Tensor&);
at::Tensor conv_epilogue(const at::Tensor&, const OptTensor&, int64_t, int64_t, const OptTensor&, int64_t,
                         const OptTensor&, const OptTensor&, int64_t, int64_t);
at::Tensor esa_tail(const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
at::Tensor conv3x3_winograd(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, const OptTensor&,
                            int64_t, const OptTensor&, int64_t, const OptTensor&, const OptTensor&, int64_t, int64_t);
at::Tensor conv1x1(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t, int64_t, const OptTensor&, int64_t,
                   const OptTensor&, int64_t, const OptTensor&, const OptTensor&, int64_t, int64_t);
at::Tensor max_pool_7s3(const at::Tensor&);
at::Tensor bsb_packed(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
at::Tensor bsb(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&);
at::Tensor esa_out(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   const at::Tensor&, const OptTensor&);
at::Tensor la_reduce(const at::Tensor&, const at::Tensor&, const at::Tensor&);
at::Tensor esa_gate_1x1(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const OptTensor&,
                        bool);
at::Tensor conv3x3_im2col(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, int64_t,
                          const OptTensor&,
                          int64_t, const OptTensor&, int64_t, const OptTensor&, const OptTensor&, int64_t, int64_t);

#define ESR_STR2(x) #x
#define ESR_STR(x) ESR_STR2(x)

const KernelTable& kernel_table() {
  static const KernelTable table{ESR_STR(ESR_CPU_CAPABILITY),
                                 ESR_CPU_LEVEL,
#if defined(ESR_HAVE_CONV_ENGINE)
                                 true,
#else
                                 false,
#endif
                                 &bsb_dw,
                                 &gate,
                                 &conv_epilogue,
                                 &esa_tail,
                                 &conv3x3_winograd,
                                 &conv1x1,
                                 &max_pool_7s3,
                                 &bsb_packed,
                                 &bsb,
                                 &esa_out,
                                 &la_reduce,
                                 &esa_gate_1x1,
                                 &conv3x3_im2col};
  return table;
}

ESR_CPU_NAMESPACE_END
