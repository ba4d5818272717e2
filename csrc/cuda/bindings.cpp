// Torch adapters of the CUDA kernels: CUDA implementations of the esr_native single-kernel ops
// (schemas: csrc/common/schemas.cpp, compiled into this extension too, so it works without the
// CPU extension). Compiled only against a CUDA build of torch (setup.py).
//
// Outputs have x's dtype; bsb and esa_out x's layout (empty_like), la_reduce is contiguous.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../common/channels.h"
#include "../common/schemas.h"
#include "../common/spec.h"
#include "kernels.cuh"

namespace {

esr_cuda::DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return esr_cuda::DType::kFloat32;
    case at::kHalf: return esr_cuda::DType::kFloat16;
    case at::kBFloat16: return esr_cuda::DType::kBFloat16;
    default: TORCH_CHECK(false, "esr_native (CUDA): unsupported dtype ", t.scalar_type());
  }
}

esr_cuda::Strides4 strides_of(const at::Tensor& t) {
  TORCH_CHECK(t.dim() == 4, "esr_native (CUDA): expected a 4-d tensor, got ", t.sizes());
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

const esr_cuda::Strides4 kNoStrides{0, 0, 0, 0};

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "esr_native::", what, " (CUDA): ", cudaGetErrorString(err));
}

// Weights arrive prepared at load (float32, contiguous); these are no-ops then.
at::Tensor f32(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

// The residual, if any: on x's device, shaped and typed like x (the kernels read it as x's type).
bool check_residual(const c10::optional<at::Tensor>& residual, const at::Tensor& x, const char* op) {
  if (!residual.has_value() || !residual->defined()) return false;
  TORCH_CHECK(residual->sizes() == x.sizes() && residual->scalar_type() == x.scalar_type() &&
                  residual->device() == x.device(),
              "esr_native::", op, " (CUDA): residual must be like x ", x.sizes(), " ", x.scalar_type());
  return true;
}

at::Tensor bsb(const at::Tensor& x, const at::Tensor& pw_weight, const at::Tensor& dw_weight,
               const at::Tensor& dw_bias, const c10::optional<at::Tensor>& residual) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(esr_channels::bsb(C, [](auto) {}), "esr_native::bsb (CUDA): no kernel for C=", C,
              "; instantiated for ", esr_channels::kBsb);
  TORCH_CHECK(H >= 2 && W >= 2, "esr_native::bsb: reflect padding needs H, W >= 2, got ", H, "x", W);
  at::Tensor pw = f32(pw_weight.reshape({C, C})), dw = f32(dw_weight.reshape({C, 9})), b = f32(dw_bias);
  at::Tensor out = at::empty_like(x);
  const bool has_res = check_residual(residual, x, "bsb");
  check(esr_cuda::launch_bsb(dtype_of(x), x.data_ptr(), strides_of(x), pw.data_ptr<float>(),
                             dw.data_ptr<float>(), b.data_ptr<float>(),
                             has_res ? residual->data_ptr() : nullptr,
                             has_res ? strides_of(*residual) : kNoStrides, out.data_ptr(),
                             strides_of(out), N, C, H, W, c10::cuda::getCurrentCUDAStream()),
        "bsb");
  return out;
}

at::Tensor esa_out(const at::Tensor& x, const at::Tensor& low, const at::Tensor& skip_w,
                   const at::Tensor& skip_b, const at::Tensor& expand_w, const at::Tensor& expand_b,
                   const c10::optional<at::Tensor>& residual) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), CR = low.size(1);
  TORCH_CHECK(esr_channels::esa(C, CR, [](auto, auto) {}), "esr_native::esa_out (CUDA): no kernel for (C, CR)=(",
              C, ", ", CR, "); instantiated for ", esr_channels::kEsa);
  at::Tensor lo = f32(low), sw = f32(skip_w.reshape({CR, C})), sb = f32(skip_b);
  at::Tensor ew = f32(expand_w.reshape({C, CR})), eb = f32(expand_b);
  at::Tensor out = at::empty_like(x);
  const bool has_res = check_residual(residual, x, "esa_out");
  check(esr_cuda::launch_esa_tail(dtype_of(x), x.data_ptr(), strides_of(x), lo.data_ptr<float>(),
                                  lo.size(2), lo.size(3), sw.data_ptr<float>(), sb.data_ptr<float>(),
                                  ew.data_ptr<float>(), eb.data_ptr<float>(),
                                  has_res ? residual->data_ptr() : nullptr,
                                  has_res ? strides_of(*residual) : kNoStrides, out.data_ptr(),
                                  strides_of(out), N, C, CR, H, W, c10::cuda::getCurrentCUDAStream()),
        "esa_out");
  return out;
}

at::Tensor la_reduce(const at::Tensor& x, const at::Tensor& reduce_w, const at::Tensor& reduce_b) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), CR = reduce_b.size(0);
  TORCH_CHECK(esr_channels::la(C, CR, [](auto, auto) {}), "esr_native::la_reduce (CUDA): no kernel for (C, CR)=(",
              C, ", ", CR, "); instantiated for ", esr_channels::kLa);
  TORCH_CHECK(H >= esr_spec::kPoolKernel && W >= esr_spec::kPoolKernel, "esr_native::la_reduce: input ", H, "x", W,
              " is smaller than the ", esr_spec::kPoolKernel, "x", esr_spec::kPoolKernel, " window");
  at::Tensor w = f32(reduce_w.reshape({CR, C})), b = f32(reduce_b);
  at::Tensor out = at::empty({N, CR, esr_spec::pooled_size(H), esr_spec::pooled_size(W)}, x.options());
  check(esr_cuda::launch_la_reduce(dtype_of(x), x.data_ptr(), strides_of(x), w.data_ptr<float>(),
                                   b.data_ptr<float>(), out.data_ptr(), strides_of(out), N, C, CR, H, W,
                                   c10::cuda::getCurrentCUDAStream()),
        "la_reduce");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(esr_native, CUDA, m) {
  m.impl("bsb", &bsb);
  m.impl("esa_out", &esa_out);
  m.impl("la_reduce", &la_reduce);
}

// `import esr_kernels._C_cuda` loads the kernels and defines the esr_native schemas unless the
// CPU extension already did.
#include <Python.h>
static struct PyModuleDef esr_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cuda(void) {
  try {
    esr_schemas::define();
  } catch (const std::exception& e) {
    PyErr_SetString(PyExc_ImportError, e.what());
    return nullptr;
  }
  return PyModule_Create(&esr_cuda_module);
}
