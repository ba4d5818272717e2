"""Fake (meta) implementations of the native ops (schemas: csrc/common/schemas.cpp), so
torch.compile can trace models that call them. Imported once an extension is loaded.

Each fake gives the real kernel's output dtype, shape and strides on every device
(tests/kernels/test_native_ops.py checks them against the kernels):
- CPU kernels (csrc/cpu) return float32 channels_last, except conv outputs with a fused pixel
  shuffle, which are float32 contiguous.
- CUDA kernels (csrc/cuda) of bsb and esa_out return ``empty_like(x)`` (x's dtype and layout);
  la_reduce a contiguous tensor in x's dtype. The other ops have no CUDA kernel.
"""
from __future__ import annotations

import torch

from .spec import pooled_size


def _nhwc(shape, like):
    return torch.empty(shape, dtype=torch.float32, device=like.device, memory_format=torch.channels_last)


def _is_cuda(x) -> bool:
    return x.device.type == "cuda"


@torch.library.register_fake("esr_native::bsb_dw")
def _bsb_dw(p, dw_weight, dw_bias, residual):
    return _nhwc(p.shape, p)


@torch.library.register_fake("esr_native::gate")
def _gate(x, att):
    return _nhwc(x.shape, x)


@torch.library.register_fake("esr_native::conv_epilogue")
def _conv_epilogue(y, passthrough, c_out, act, residual, residual_mode, att, shortcut, shortcut_mode, shuffle):
    n, _, h, w = y.shape
    if shuffle:
        return torch.empty((n, c_out // (shuffle * shuffle), h * shuffle, w * shuffle), dtype=torch.float32,
                           device=y.device)
    return _nhwc((n, c_out, h, w), y)


@torch.library.register_fake("esr_native::esa_tail")
def _esa_tail(x, s, low, residual):
    return _nhwc(x.shape, x)


def _same_or_nhwc(x):
    """CUDA kernels write in x's layout and dtype; the CPU versions float32 channels_last."""
    return torch.empty_like(x) if _is_cuda(x) else _nhwc(x.shape, x)


@torch.library.register_fake("esr_native::bsb")
def _bsb(x, pw_weight, dw_weight, dw_bias, residual):
    return _same_or_nhwc(x)


@torch.library.register_fake("esr_native::esa_out")
def _esa_out(x, low, skip_w, skip_b, expand_w, expand_b, residual):
    return _same_or_nhwc(x)


@torch.library.register_fake("esr_native::la_reduce")
def _la_reduce(x, reduce_w, reduce_b):
    n, _, h, w = x.shape
    shape = (n, reduce_b.shape[0], pooled_size(h), pooled_size(w))
    return x.new_empty(shape) if _is_cuda(x) else _nhwc(shape, x)


# The engine's convs end in conv_epilogue's arguments (passthrough, c_out, then from residual on).
@torch.library.register_fake("esr_native::conv3x3_winograd")
def _conv3x3_winograd(x, u, bias, c_conv, act, passthrough, c_out, *epilogue):
    return _conv_epilogue(x, passthrough, c_out, act, *epilogue)


@torch.library.register_fake("esr_native::conv1x1")
def _conv1x1(xs, w, bias, c_conv, act, passthrough, c_out, *epilogue):
    return _conv_epilogue(xs[0], passthrough, c_out, act, *epilogue)


@torch.library.register_fake("esr_native::conv3x3_im2col")
def _conv3x3_im2col(x, w, bias, stride, padding, c_conv, act, passthrough, c_out, *epilogue):
    n, _, h, w_ = x.shape
    out_h, out_w = (h + 2 * padding - 3) // stride + 1, (w_ + 2 * padding - 3) // stride + 1
    return _conv_epilogue(x.new_empty((n, c_conv, out_h, out_w)), passthrough, c_out, act, *epilogue)


@torch.library.register_fake("esr_native::esa_gate_1x1")
def _esa_gate_1x1(x, w, bias, low, residual, input_conv):
    return _nhwc(x.shape, x)


@torch.library.register_fake("esr_native::bsb_packed")
def _bsb_packed(x, pw, taps, bias, residual):
    return _nhwc(x.shape, x)


@torch.library.register_fake("esr_native::max_pool_7s3")
def _max_pool_7s3(x):
    n, c, h, w = x.shape
    return _nhwc((n, c, pooled_size(h), pooled_size(w)), x)
