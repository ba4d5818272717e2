"""The native CPU backend: dense convolutions through oneDNN (PyTorch's mkldnn, activation
fused as a post-op where that is the only epilogue), everything around them in the C++
kernels of ``esr_kernels._C_cpu`` (torch.ops.esr_native.*): the LocalAttention gate, the
reflect-padded depthwise + GELU of BSB, the conv epilogues (partial channels, gated residual,
shortcut + pixel shuffle) and the ESA tail. float32, channels_last throughout.

ESA is folded at load: the gate logits are expand(up(low) + skip(reduce(x))) and every map in
it is linear, so they become one full-resolution 1x1 conv of x plus the bilinear upsample of the
low-resolution branch already expanded to C channels (bilinear interpolation commutes with a
1x1 conv): two full-resolution passes (a 1x1 conv, the tail) instead of five.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import (ACT_GELU, ACT_LEAKY, ACT_NONE, ACT_SIGMOID, ACT_SILU, LEAKY_SLOPE, POOL_KERNEL,
                   POOL_STRIDE, RES_NONE, RES_TENSOR)

# oneDNN post-op names for the activations it can fuse into a convolution.
_ONEDNN_ACT = {ACT_NONE: ("none", [], ""), ACT_GELU: ("gelu", [], "none"),
               ACT_SILU: ("swish", [], ""), ACT_LEAKY: ("leaky_relu", [LEAKY_SLOPE], ""),
               ACT_SIGMOID: ("sigmoid", [], "")}


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def padded_channels(c: int) -> int:
    """oneDNN's fp32 kernels run AVX-512 lanes of 16 channels: 46 input channels measured ~50%
    slower than 48. Feature widths within 10% under a multiple of 16 are zero-padded up to it
    at load (RLFN's 46 -> 48); the padded channels stay exactly zero through every op (zero
    weights and biases, LeakyReLU(0) = 0, residual sums, and the ESA gate 0 * sigmoid(0))."""
    up = (c + 15) // 16 * 16
    # Feature maps only (<= 64 channels): wider inputs are concatenations of unpadded features.
    return up if c <= 64 and (up - c) * 10 <= c else c


def _pad_conv(w: torch.Tensor, b: torch.Tensor | None, pad_in: bool = True):
    co, ci = w.shape[:2]
    pco, pci = padded_channels(co), padded_channels(ci) if pad_in else ci
    wp = w.new_zeros((pco, pci) + tuple(w.shape[2:]))
    wp[:co, :ci] = w
    bp = w.new_zeros(pco)
    if b is not None:
        bp[:co] = b
    return wp, bp


class CpuBackend:
    name = "cpu"

    def __init__(self):
        import esr_kernels._C_cpu  # noqa: F401  registers torch.ops.esr_native

        from . import native  # noqa: F401  fake implementations

        self.native = torch.ops.esr_native
        self._pointwise = torch.ops.mkldnn._convolution_pointwise
        self._binary = torch.ops.mkldnn._convolution_pointwise.binary

    def _conv2d(self, x, w, b, stride, padding, act=ACT_NONE):
        # Measured against F.conv2d + the activation in the C++ epilogue: the fused post-op is
        # faster for every model here (e.g. PFDNLite 1.37x vs 1.14x over eager channels_last).
        attr, scalars, algorithm = _ONEDNN_ACT[act]
        return self._pointwise(_cl(x), w, b, [padding, padding], [stride, stride], [1, 1], 1,
                               attr, scalars, algorithm)

    # ---- packing (once, at load)
    def pack_conv(self, weight, bias, op_channels=None, weight_scale=1.0) -> dict:
        w = weight.detach().double() * weight_scale
        b = bias.detach().double() * weight_scale if bias is not None else None
        if op_channels is None:  # partial convs keep their layout (PFDNLite: 48 channels already)
            w, b = _pad_conv(w, b)
        elif b is None:
            b = w.new_zeros(w.shape[0])
        return {"w": _cl(w.float()), "b": b.float().to(w.device)}

    def pack_bsb(self, pointwise: nn.Conv2d, depthwise: nn.Conv2d) -> dict:
        return {"pw": _cl(pointwise.weight.detach().float()), "dw": depthwise.weight.detach().float().clone(),
                "b": depthwise.bias.detach().float().clone()}

    def pack_esa(self, esa) -> dict:
        from .packing import fold_esa_skip

        wr, br = esa.reduce.weight.detach().double(), esa.reduce.bias.detach().double()
        we, be = esa.expand.weight.detach().double()[:, :, 0, 0], esa.expand.bias.detach().double()
        skip_w, skip_b = fold_esa_skip(esa.reduce, esa.skip)
        reduce_w, _ = _pad_conv(wr, None)  # only the input side pads (16 stays)
        full_w, full_b = _pad_conv((we @ skip_w)[:, :, None, None], we @ skip_b + be)
        expand_w, _ = _pad_conv(we[:, :, None, None], None)
        return {
            "reduce_w": _cl(reduce_w.float()), "reduce_b": br.float(),
            "down_w": _cl(esa.down.weight.detach().float()), "down_b": esa.down.bias.detach().float().clone(),
            "low_w": _cl(esa.low.weight.detach().float()), "low_b": esa.low.bias.detach().float().clone(),
            # gate logits = full(x) + up(expand_low(low)):
            "full_w": _cl(full_w.float()), "full_b": full_b.float(),
            "expand_w": _cl(expand_w.float()),
        }

    def pack_la(self, reduce: nn.Conv2d) -> dict:
        return {"w": _cl(reduce.weight.detach().float()), "b": reduce.bias.detach().float().clone()}

    # ---- ops
    def conv(self, x, p, c_conv, *, c_out=None, ksize=3, stride=1, padding=None, act=0, residual=None,
             residual_mode=0, att=None, gate_input=False, shift=None, shortcut=None, shortcut_mode=0,
             shuffle=0):
        padding = ksize // 2 if padding is None else padding
        c_out = c_out or c_conv
        if c_out == c_conv:  # channel padding (see padded_channels) is the packed weight's business
            c_conv = c_out = p["w"].shape[0]
        xin = x
        if shift is not None:
            xin = x - shift.view(1, -1, 1, 1)
        if gate_input:
            xin = self.native.gate(xin, att)
        c_in = p["w"].shape[1]
        conv_in = xin if c_in == xin.shape[1] else xin[:, :c_in]
        # The activation always runs as oneDNN's post-op; the C++ epilogue does the rest.
        y = self._conv2d(conv_in, p["w"], p["b"], stride, padding, act)
        if c_out == c_conv and residual_mode == 0 and shuffle == 0:
            return y
        return self.native.conv_epilogue(y, xin if c_out > c_conv else None, c_out, ACT_NONE, residual,
                                         residual_mode, att, shortcut, shortcut_mode, shuffle)

    def bsb(self, x, p, residual=None):
        pw = self._pointwise(_cl(x), p["pw"], None, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        return self.native.bsb_dw(pw, p["dw"], p["b"], residual)

    def esa(self, x, p, residual=None):
        r = self._conv2d(x, p["reduce_w"], p["reduce_b"], 1, 0)
        d = self._conv2d(r, p["down_w"], p["down_b"], 2, 0)
        low = self._conv2d(F.max_pool2d(d, POOL_KERNEL, POOL_STRIDE), p["low_w"], p["low_b"], 1, 1)
        low = self._pointwise(_cl(low), p["expand_w"], None, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        s = self._conv2d(x, p["full_w"], p["full_b"], 1, 0)
        return self.native.esa_tail(x, s, low, residual)

    def pack_concat_conv(self, weight, bias, chunks: int) -> dict:
        """A 1x1 conv over the concatenation of ``chunks`` equal-width features, split into one
        weight per feature (see concat_conv)."""
        w = weight.detach().float()
        step = w.shape[1] // chunks
        packed = {f"w{i}": _cl(w[:, i * step:(i + 1) * step].contiguous()) for i in range(chunks)}
        packed["b"] = bias.detach().float().clone()
        return packed

    def concat_conv(self, features, p, c_out, act=ACT_NONE, residual=None):
        """act(1x1 conv of cat(features) to c_out channels) [+ residual] without the concatenation: a chain of
        1x1 convs each adding its product to the previous (oneDNN binary post-op). The 216-channel
        concatenation would be a >32 MB tensor, which glibc maps fresh on every call; its page
        faults made cat + conv 2.5x slower here."""
        acc = self._pointwise(_cl(features[0]), p["w0"], p["b"], [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        for i in range(1, len(features)):
            acc = self._binary(_cl(features[i]), acc, p[f"w{i}"], None, [0, 0], [1, 1], [1, 1], 1, "add",
                               1.0, None, [], "")
        return self.native.conv_epilogue(acc, None, acc.shape[1], act, residual,
                                         RES_TENSOR if residual is not None else RES_NONE, None, None, 0, 0)

    def la_reduce(self, x, p):
        return F.max_pool2d(self._conv2d(x, p["w"], p["b"], 1, 0), POOL_KERNEL, POOL_STRIDE)
