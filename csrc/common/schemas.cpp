// esr_native schemas: one list, defined by whichever native extension loads first (schemas.h).
// Kernels are registered separately by each extension (TORCH_LIBRARY_IMPL); fake (meta)
// implementations in Python (esr_kernels/native.py).
#include "schemas.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/frontend/function_schema_parser.h>
#include <torch/library.h>

#include <memory>
#include <mutex>
#include <string>

namespace esr_schemas {
namespace {

constexpr const char* kSchemas[] = {
    // CPU kernels (csrc/cpu).
    "bsb_dw(Tensor p, Tensor dw_weight, Tensor dw_bias, Tensor? residual) -> Tensor",
    "gate(Tensor x, Tensor att) -> Tensor",
    "conv_epilogue(Tensor y, Tensor? passthrough, int c_out, int act, Tensor? residual, "
    "int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor",
    "esa_tail(Tensor x, Tensor s, Tensor low, Tensor? residual) -> Tensor",
    // Dense convolutions of the conv engine (winograd.cpp, conv1x1.cpp), with conv_epilogue's
    // arguments after the conv's own (the epilogue runs fused).
    "conv3x3_winograd(Tensor x, Tensor u, Tensor bias, int c_conv, int act, Tensor? passthrough, int c_out, "
    "Tensor? residual, int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor",
    "conv1x1(Tensor[] xs, Tensor w, Tensor bias, int c_conv, int act, Tensor? passthrough, int c_out, "
    "Tensor? residual, int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor",
    "esa_gate_1x1(Tensor x, Tensor w, Tensor bias, Tensor low, Tensor? residual, bool input_conv) -> Tensor",
    "conv3x3_im2col(Tensor x, Tensor w, Tensor bias, int stride, int padding, int c_conv, int act, Tensor? passthrough, int c_out, "
    "Tensor? residual, int residual_mode, Tensor? att, Tensor? shortcut, int shortcut_mode, int shuffle) -> Tensor",
    "max_pool_7s3(Tensor x) -> Tensor",
    "bsb_packed(Tensor x, Tensor pw, Tensor taps, Tensor bias, Tensor? residual) -> Tensor",
    // Single-kernel ops: CUDA kernels (csrc/cuda) and their CPU versions (csrc/cpu/pixel_ops.cpp),
    // both running the per-pixel functions of csrc/common/pixel_ops.h.
    "bsb(Tensor x, Tensor pw_weight, Tensor dw_weight, Tensor dw_bias, Tensor? residual) -> Tensor",
    "esa_out(Tensor x, Tensor low, Tensor skip_w, Tensor skip_b, Tensor expand_w, Tensor expand_b, "
    "Tensor? residual) -> Tensor",
    "la_reduce(Tensor x, Tensor reduce_w, Tensor reduce_b) -> Tensor",
};

}  // namespace

void define() {
  static std::mutex mutex;
  // Lives as long as the process: the schemas it defines must outlive every caller.
  static std::unique_ptr<torch::Library> library;
  const std::lock_guard<std::mutex> lock(mutex);
  for (const char* text : kSchemas) {
    c10::FunctionSchema schema = torch::jit::parseSchema(std::string("esr_native::") + text);
    const auto existing = c10::Dispatcher::singleton().findSchema({schema.name(), schema.overload_name()});
    if (existing.has_value()) {
      TORCH_CHECK(c10::toString(existing->schema()) == c10::toString(schema),
                  "esr_native: schema ", c10::toString(schema), " is already defined differently as ",
                  c10::toString(existing->schema()),
                  " (native extensions from different builds: reinstall esr-kernels)");
      continue;
    }
    if (!library) library = std::make_unique<torch::Library>(torch::Library::FRAGMENT, "esr_native", std::nullopt, __FILE__, __LINE__);
    library->def(text);
  }
}

}  // namespace esr_schemas
