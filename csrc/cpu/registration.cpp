// CPU kernels of the esr_native ops (schemas: csrc/common/schemas.cpp, defined from PyInit
// below). Fake (meta) implementations are registered from Python (esr_kernels/native.py).
#include <torch/library.h>

#include "../common/schemas.h"
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
// CPU versions of the CUDA extension's single-kernel ops (pixel_ops.cpp).
at::Tensor bsb(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&);
at::Tensor esa_out(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                   const at::Tensor&, const c10::optional<at::Tensor>&);
at::Tensor la_reduce(const at::Tensor&, const at::Tensor&, const at::Tensor&);
}  // namespace esr_cpu

// The tensor ops' schemas are defined by esr_schemas::define() (csrc/common/schemas.cpp, shared
// with the CUDA extension); these two are this extension's own, with their implementations.
TORCH_LIBRARY_FRAGMENT(esr_native, m) {
  m.def("conv_engine_available() -> bool", &esr_cpu::conv_engine_available);
  m.def("empty_cache() -> int", &esr_cpu::empty_cache);
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
  m.impl("bsb", &esr_cpu::bsb);
  m.impl("esa_out", &esr_cpu::esa_out);
  m.impl("la_reduce", &esr_cpu::la_reduce);
}

// A Python module so that `import esr_kernels._C_cpu` loads the library (and its registrations)
// and defines the esr_native schemas unless the CUDA extension already did.
#include <Python.h>
static struct PyModuleDef esr_cpu_module = {PyModuleDef_HEAD_INIT, "_C_cpu", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cpu(void) {
  try {
    esr_schemas::define();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ImportError, e.what());
    return nullptr;
  }
  return PyModule_Create(&esr_cpu_module);
}
