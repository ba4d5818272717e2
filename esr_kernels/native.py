"""Fake (meta) implementations of the native ops (schemas: csrc/cpu/registration.cpp), so
torch.compile can trace models that call them. Imported once the extension is loaded."""
from __future__ import annotations

import torch


def _nhwc(shape, like):
    return torch.empty(shape, dtype=torch.float32, device=like.device, memory_format=torch.channels_last)


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
