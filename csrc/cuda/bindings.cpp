// Torch adapters of the CUDA kernels: CUDA implementations of esr_native ops whose schemas
// live in csrc/cpu/registration.cpp (the CPU extension is always built alongside). Compiled
// only against a CUDA build of torch (setup.py).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

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

at::Tensor bsb(const at::Tensor& x, const at::Tensor& pw_weight, const at::Tensor& dw_weight,
               const at::Tensor& dw_bias, const c10::optional<at::Tensor>& residual) {
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  at::Tensor pw = f32(pw_weight.reshape({C, C})), dw = f32(dw_weight.reshape({C, 9})), b = f32(dw_bias);
  at::Tensor out = at::empty_like(x);
  const bool has_res = residual.has_value() && residual->defined();
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
  at::Tensor lo = f32(low), sw = f32(skip_w.reshape({CR, C})), sb = f32(skip_b);
  at::Tensor ew = f32(expand_w.reshape({C, CR})), eb = f32(expand_b);
  at::Tensor out = at::empty_like(x);
  const bool has_res = residual.has_value() && residual->defined();
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
  at::Tensor w = f32(reduce_w.reshape({CR, C})), b = f32(reduce_b);
  at::Tensor out = at::empty({N, CR, (H - 7) / 3 + 1, (W - 7) / 3 + 1}, x.options());
  check(esr_cuda::launch_la_reduce(dtype_of(x), x.data_ptr(), strides_of(x), w.data_ptr<float>(),
                                   b.data_ptr<float>(), out.data_ptr(), strides_of(out), N, C, CR, H, W,
                                   c10::cuda::getCurrentCUDAStream()),
        "la_reduce");
  return out;
}

at::Tensor gate(const at::Tensor& x, const at::Tensor& att) {
  const c10::cuda::CUDAGuard guard(x.device());
  TORCH_CHECK(att.scalar_type() == x.scalar_type(), "gate: att and x dtypes differ");
  at::Tensor out = at::empty_like(x);
  check(esr_cuda::launch_gate(dtype_of(x), x.data_ptr(), strides_of(x), att.data_ptr(), strides_of(att),
                              att.size(2), att.size(3), out.data_ptr(), strides_of(out), x.size(0),
                              x.size(1), x.size(2), x.size(3), c10::cuda::getCurrentCUDAStream()),
        "gate");
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(esr_native, CUDA, m) {
  m.impl("bsb", &bsb);
  m.impl("esa_out", &esa_out);
  m.impl("la_reduce", &la_reduce);
  m.impl("gate", &gate);
}

#include <Python.h>
static struct PyModuleDef esr_cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&esr_cuda_module); }
