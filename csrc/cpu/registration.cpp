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
}  // namespace esr_cpu

TORCH_LIBRARY(esr_native, m) {
  m.def("bsb_dw(Tensor p, Tensor dw_weight, Tensor dw_bias, Tensor? residual) -> Tensor");
  m.def("gate(Tensor x, Tensor att) -> Tensor");
  m.def("conv_epilogue(Tensor y, Tensor? passthrough, int c_out, int act, Tensor? residual, "
        "int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor");
  m.def("esa_tail(Tensor x, Tensor s, Tensor low, Tensor? residual) -> Tensor");
}

TORCH_LIBRARY_IMPL(esr_native, CPU, m) {
  m.impl("bsb_dw", &esr_cpu::bsb_dw);
  m.impl("gate", &esr_cpu::gate);
  m.impl("conv_epilogue", &esr_cpu::conv_epilogue);
  m.impl("esa_tail", &esr_cpu::esa_tail);
}

// A Python module so that `import esr_kernels._C_cpu` loads the library (and its registrations).
#include <Python.h>
static struct PyModuleDef esr_cpu_module = {PyModuleDef_HEAD_INIT, "_C_cpu", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cpu(void) { return PyModule_Create(&esr_cpu_module); }
