// Schemas of the native CPU ops (namespace esr_native) and their CPU kernels. Fake (meta)
// implementations are registered from Python (esr_kernels/native.py).
#include <torch/library.h>

#include "common.h"

namespace esr_cpu {
at::Tensor bsb_dw(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
at::Tensor gate(const at::Tensor&, const at::Tensor&);
at::Tensor conv_epilogue(const at::Tensor&, const c10::optional<at::Tensor>&, int64_t, int64_t,
                         const c10::optional<at::Tensor>&, int64_t, const c10::optional<at::Tensor>&,
                         const c10::optional<at::Tensor>&, int64_t, int64_t);
at::Tensor esa_tail(const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
using OptTensor = c10::optional<at::Tensor>;
at::Tensor conv3x3_winograd(const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, int64_t, const OptTensor&,
                            int64_t, const OptTensor&, int64_t, const OptTensor&, const OptTensor&, int64_t, int64_t);
at::Tensor conv1x1(at::TensorList, const at::Tensor&, const at::Tensor&, int64_t, int64_t, const OptTensor&, int64_t,
                   const OptTensor&, int64_t, const OptTensor&, const OptTensor&, int64_t, int64_t);
bool conv_engine_available();
at::Tensor max_pool_7s3(const at::Tensor&);
at::Tensor bsb_packed(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                      const c10::optional<at::Tensor>&);
}  // namespace esr_cpu

namespace {

// CPU implementations of the ops that the CUDA extension implements as single kernels
// (csrc/cuda): here composed of oneDNN convolutions (through ATen) and the kernels above, so
// their semantics are tested on every machine.
at::Tensor bsb(const at::Tensor& x, const at::Tensor& pw_weight, const at::Tensor& dw_weight,
               const at::Tensor& dw_bias, const c10::optional<at::Tensor>& residual) {
  const int64_t C = x.size(1);
  at::Tensor p = at::conv2d(esr_cpu::as_nhwc(x), pw_weight.to(at::kFloat).reshape({C, C, 1, 1}));
  return esr_cpu::bsb_dw(p, dw_weight.reshape({C, 1, 3, 3}), dw_bias, residual);
}

at::Tensor esa_out(const at::Tensor& x, const at::Tensor& low, const at::Tensor& skip_w,
                   const at::Tensor& skip_b, const at::Tensor& expand_w, const at::Tensor& expand_b,
                   const c10::optional<at::Tensor>& residual) {
  const int64_t C = x.size(1), CR = low.size(1);
  at::Tensor xf = esr_cpu::as_nhwc(x);
  at::Tensor ew = expand_w.to(at::kFloat).reshape({C, CR, 1, 1});
  // gate logits = expand(up(low) + skip(x)) = expand(skip(x)) + up(expand(low)).
  at::Tensor full_w = at::matmul(ew.reshape({C, CR}), skip_w.to(at::kFloat).reshape({CR, C})).reshape({C, C, 1, 1});
  at::Tensor full_b = at::matmul(ew.reshape({C, CR}), skip_b.to(at::kFloat)) + expand_b.to(at::kFloat);
  at::Tensor s = at::conv2d(xf, full_w, full_b);
  at::Tensor lo = at::conv2d(low.to(at::kFloat), ew);
  return esr_cpu::esa_tail(xf, s, lo, residual);
}

at::Tensor la_reduce(const at::Tensor& x, const at::Tensor& reduce_w, const at::Tensor& reduce_b) {
  const int64_t C = x.size(1), CR = reduce_b.size(0);
  at::Tensor r = at::conv2d(esr_cpu::as_nhwc(x), reduce_w.to(at::kFloat).reshape({CR, C, 1, 1}), reduce_b.to(at::kFloat));
  return at::max_pool2d(r, {7, 7}, {3, 3});
}

}  // namespace

TORCH_LIBRARY(esr_native, m) {
  m.def("bsb_dw(Tensor p, Tensor dw_weight, Tensor dw_bias, Tensor? residual) -> Tensor");
  m.def("gate(Tensor x, Tensor att) -> Tensor");
  m.def("conv_epilogue(Tensor y, Tensor? passthrough, int c_out, int act, Tensor? residual, "
        "int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor");
  m.def("esa_tail(Tensor x, Tensor s, Tensor low, Tensor? residual) -> Tensor");
  // Dense convolutions of the AVX-512 engine (winograd.cpp, conv1x1.cpp), with conv_epilogue's
  // arguments after the conv's own (the epilogue runs fused).
  m.def("conv3x3_winograd(Tensor x, Tensor u, Tensor bias, int c_conv, int act, Tensor? passthrough, int c_out, "
        "Tensor? residual, int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor");
  m.def("conv1x1(Tensor[] xs, Tensor w, Tensor bias, int c_conv, int act, Tensor? passthrough, int c_out, "
        "Tensor? residual, int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor");
  m.def("max_pool_7s3(Tensor x) -> Tensor");
  m.def("bsb_packed(Tensor x, Tensor pw, Tensor taps, Tensor bias, Tensor? residual) -> Tensor");
  m.def("conv_engine_available() -> bool", &esr_cpu::conv_engine_available);
  m.def("empty_cache() -> int", &esr_cpu::empty_cache);
  // Single-kernel ops of the CUDA extension (CPU versions composed above).
  m.def("bsb(Tensor x, Tensor pw_weight, Tensor dw_weight, Tensor dw_bias, Tensor? residual) -> Tensor");
  m.def("esa_out(Tensor x, Tensor low, Tensor skip_w, Tensor skip_b, Tensor expand_w, Tensor expand_b, "
        "Tensor? residual) -> Tensor");
  m.def("la_reduce(Tensor x, Tensor reduce_w, Tensor reduce_b) -> Tensor");
}

TORCH_LIBRARY_IMPL(esr_native, CPU, m) {
  m.impl("bsb_dw", &esr_cpu::bsb_dw);
  m.impl("gate", &esr_cpu::gate);
  m.impl("conv_epilogue", &esr_cpu::conv_epilogue);
  m.impl("esa_tail", &esr_cpu::esa_tail);
  m.impl("conv3x3_winograd", &esr_cpu::conv3x3_winograd);
  m.impl("conv1x1", &esr_cpu::conv1x1);
  m.impl("bsb_packed", &esr_cpu::bsb_packed);
  m.impl("max_pool_7s3", &esr_cpu::max_pool_7s3);
  m.impl("bsb", &bsb);
  m.impl("esa_out", &esa_out);
  m.impl("la_reduce", &la_reduce);
}

// A Python module so that `import esr_kernels._C_cpu` loads the library (and its registrations).
#include <Python.h>
static struct PyModuleDef esr_cpu_module = {PyModuleDef_HEAD_INIT, "_C_cpu", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cpu(void) { return PyModule_Create(&esr_cpu_module); }
