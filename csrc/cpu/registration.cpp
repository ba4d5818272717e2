// CPU kernels of the esr_native ops (schemas: csrc/common/schemas.cpp, defined from PyInit
// below). Fake (meta) implementations are registered from Python (esr_kernels/native.py).
#include <ATen/native/CPUBlas.h>
#include <torch/library.h>

#include "../common/schemas.h"
#include "brgemm_cache.h"
#include "buffer_cache.h"
#include "isa.h"

// Each op forwards to the kernels of the ISA level chosen at run time (dispatch.cpp).
namespace esr_cpu {

template <typename Sig, Sig KernelTable::*Field>
struct Forward;
template <typename R, typename... Args, R (*KernelTable::*Field)(Args...)>
struct Forward<R (*)(Args...), Field> {
  static R call(Args... args) { return (kernels().*Field)(args...); }
};

#define ESR_OP(name) &esr_cpu::Forward<decltype(esr_cpu::KernelTable::name), &esr_cpu::KernelTable::name>::call

std::vector<std::string> cpu_isa_info();
bool conv_engine_available();
}  // namespace esr_cpu

// The tensor ops' schemas are defined by esr_schemas::define() (csrc/common/schemas.cpp, shared
// with the CUDA extension); these are this extension's own, with their implementations.
TORCH_LIBRARY_FRAGMENT(esr_native, m) {
  m.def("conv_engine_available() -> bool", &esr_cpu::conv_engine_available);
  m.def("empty_cache() -> int", &esr_cpu::empty_cache);
  // The buffer cache's byte limit (negative: none), set from Python's parse of ESR_CPU_CACHE_MB.
  m.def("set_cache_limit(int bytes) -> ()", &esr_cpu::set_cache_limit);
  m.def("cache_limit() -> int", &esr_cpu::cache_limit);
  // The ISA level that runs and why (dispatch.cpp): "key=value" strings.
  m.def("cpu_isa_info() -> str[]", &esr_cpu::cpu_isa_info);
  // The bf16 GEMM of the conv engine (isa.h: 0 own micro-kernel, 1 oneDNN's brgemm), set from
  // Python's parse of ESR_CPU_GEMM; brgemm_packs_weights: oneDNN wants B repacked (AMX).
  m.def("set_bf16_gemm(int kind) -> ()", &esr_cpu::set_bf16_gemm);
  m.def("bf16_gemm() -> int", &esr_cpu::bf16_gemm);
  m.def("brgemm_packs_weights() -> bool", [] { return at::native::cpublas::could_pack(at::kBFloat16); });
  // How many weights' brgemm operands are kept (made once per weight: brgemm_cache.h).
  m.def("brgemm_cache_entries() -> int", &esr_cpu::brgemm_cache_entries);
}

TORCH_LIBRARY_IMPL(esr_native, CPU, m) {
  m.impl("bsb_dw", ESR_OP(bsb_dw));
  m.impl("gate", ESR_OP(gate));
  m.impl("conv_epilogue", ESR_OP(conv_epilogue));
  m.impl("esa_tail", ESR_OP(esa_tail));
  m.impl("conv3x3_winograd", ESR_OP(conv3x3_winograd));
  m.impl("conv1x1", ESR_OP(conv1x1));
  m.impl("bsb_packed", ESR_OP(bsb_packed));
  m.impl("max_pool_7s3", ESR_OP(max_pool_7s3));
  m.impl("bsb", ESR_OP(bsb));
  m.impl("esa_out", ESR_OP(esa_out));
  m.impl("la_reduce", ESR_OP(la_reduce));
  m.impl("esa_gate_1x1", ESR_OP(esa_gate_1x1));
  m.impl("conv3x3_im2col", ESR_OP(conv3x3_im2col));
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
