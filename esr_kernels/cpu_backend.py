"""The native CPU backend, float32 channels_last throughout, all in the C++ kernels of
``esr_kernels._C_cpu`` (torch.ops.esr_native.*):
- dense convolutions: stride-1 3x3 by Winograd F(2x2, 3x3) and 1x1 as register-blocked GEMMs
  (the AVX-512 conv engine, csrc/cpu/winograd.cpp and conv1x1.cpp) with bias, activation and
  residual fused; the rest (stride 2, and every conv on a build without AVX-512) through oneDNN
  (PyTorch's mkldnn, activation fused as a post-op);
- around them: the LocalAttention gate, the reflect-padded depthwise + GELU of BSB, the conv
  epilogues (partial channels, gated residual, shortcut + pixel shuffle) and the ESA tail.
Kernel outputs come from a size-keyed buffer cache (csrc/cpu/buffer_cache.h), which removes
the page faults of fresh multi-megabyte allocations.

ESA is folded at load: the gate logits are expand(up(low) + skip(reduce(x))) and every map in
it is linear, so they become one full-resolution 1x1 conv of x plus the bilinear upsample of the
low-resolution branch already expanded to C channels (bilinear interpolation commutes with a
1x1 conv): two full-resolution passes (a 1x1 conv, the tail) instead of five.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .packing import pack_bsb_cpu, pack_gemm_1x1, pack_winograd_3x3, pad_vector, round_up16
from .spec import (ACT_GELU, ACT_LEAKY, ACT_NONE, ACT_SIGMOID, ACT_SILU, LEAKY_SLOPE, POOL_KERNEL,
                   POOL_STRIDE, RES_NONE, RES_TENSOR, SHORTCUT_NONE)

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

    def __deepcopy__(self, memo):
        # Stateless (packs live in the modules' buffers) and holds torch.ops handles, which
        # cannot be copied: a deep copy of a fused model shares its backend.
        return self

    def __init__(self):
        import esr_kernels._C_cpu  # noqa: F401  registers torch.ops.esr_native

        from . import native  # noqa: F401  fake implementations

        self.native = torch.ops.esr_native
        self._pointwise = torch.ops.mkldnn._convolution_pointwise
        self._binary = torch.ops.mkldnn._convolution_pointwise.binary
        # The Winograd / GEMM conv engine needs an AVX-512 build (setup.py: -march=native);
        # ESR_CPU_CONV_ENGINE=0 keeps oneDNN's convolutions (for comparison).
        self.engine = (bool(self.native.conv_engine_available())
                       and os.environ.get("ESR_CPU_CONV_ENGINE", "1") != "0")

    def _engine_weights(self, w: torch.Tensor, b: torch.Tensor) -> dict:
        """The conv engine's layouts of a (C_out, C_in, k, k) weight, next to oneDNN's."""
        if not self.engine or w.shape[-1] not in (1, 3):
            return {}
        if w.shape[-1] == 3 and w.shape[1] < 8:
            # An RGB head conv is mostly Winograd transforms for 3 channels of GEMM: oneDNN's
            # direct conv measured 1.0 vs 2.7 ms at 256x256.
            return {}
        key = "u" if w.shape[-1] == 3 else "w1"
        packed = pack_winograd_3x3(w) if key == "u" else pack_gemm_1x1(w)
        return {key: packed, "bp": pad_vector(b, round_up16(w.shape[0]), w)}

    def _dense(self, x, p, ksize, stride, padding, act=ACT_NONE, *, passthrough=None, c_out=None, residual=None,
               residual_mode=RES_NONE, att=None, shortcut=None, shortcut_mode=SHORTCUT_NONE, shuffle=0):
        """act(conv(x) + bias) and the conv epilogue (csrc/cpu/epilogue.h: partial channels,
        residual or gated residual, shortcut + pixel shuffle): fused into the conv engine where
        it applies, else a oneDNN conv (activation as its post-op) and the conv_epilogue op."""
        c_conv = p["w"].shape[0]
        epilogue = (passthrough, c_out or c_conv, residual, residual_mode, att, shortcut, shortcut_mode, shuffle)
        if stride == 1 and padding == ksize // 2:
            if "u" in p:
                return self.native.conv3x3_winograd(x, p["u"], p["bp"], c_conv, act, *epilogue)
            if "w1" in p:
                return self.native.conv1x1([x], p["w1"], p["bp"], c_conv, act, *epilogue)
        y = self._conv2d(x, p["w"], p["b"], stride, padding, act)
        if epilogue[1] == c_conv and residual_mode == RES_NONE and shortcut_mode == SHORTCUT_NONE and shuffle == 0:
            return y
        return self.native.conv_epilogue(y, passthrough, epilogue[1], ACT_NONE, *epilogue[2:])

    def _conv2d(self, x, w, b, stride, padding, act=ACT_NONE):
        # The oneDNN path (stride 2, builds without AVX-512). Measured against F.conv2d + the
        # activation in the C++ epilogue: the fused post-op was faster for every model.
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
        w, b = w.float(), b.float().to(w.device)
        return {"w": _cl(w), "b": b, **self._engine_weights(w, b)}

    def pack_bsb(self, pointwise: nn.Conv2d, depthwise: nn.Conv2d) -> dict:
        if self.engine:  # pointwise, depthwise and GELU in one pass (csrc/cpu/bsb_fused.cpp)
            return {f"fused_{k}": t for k, t in pack_bsb_cpu(pointwise.weight, depthwise.weight,
                                                              depthwise.bias).items()}
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
        convs = {"reduce": (reduce_w, br), "down": (esa.down.weight, esa.down.bias),
                 "low": (esa.low.weight, esa.low.bias),
                 # gate logits = full(x) + up(expand_low(low)):
                 "full": (full_w, full_b), "expand": (expand_w, torch.zeros_like(full_b))}
        # Flat keys "<conv>_<tensor>": packs are stored as module buffers.
        return {f"{name}_{k}": t for name, (w, b) in convs.items() for k, t in self._pack_dense(w, b).items()}

    def _pack_dense(self, w, b) -> dict:
        w, b = w.detach().float(), b.detach().float()
        return {"w": _cl(w), "b": b, **self._engine_weights(w, b)}

    def pack_la(self, reduce: nn.Conv2d) -> dict:
        return self._pack_dense(reduce.weight, reduce.bias)

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
        return self._dense(conv_in, p, ksize, stride, padding, act, passthrough=xin if c_out > c_conv else None,
                           c_out=c_out, residual=residual, residual_mode=residual_mode, att=att, shortcut=shortcut,
                           shortcut_mode=shortcut_mode, shuffle=shuffle)

    def bsb(self, x, p, residual=None):
        if "fused_pw" in p:
            return self.native.bsb_packed(x, p["fused_pw"], p["fused_taps"], p["fused_bias"], residual)
        pw = self._pointwise(_cl(x), p["pw"], None, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        return self.native.bsb_dw(pw, p["dw"], p["b"], residual)

    def esa(self, x, p, residual=None):
        def conv(name):
            return {k[len(name) + 1:]: t for k, t in p.items() if k.startswith(name + "_")}

        r = self._dense(x, conv("reduce"), 1, 1, 0)
        d = self._dense(r, conv("down"), 3, 2, 0)
        low = self._dense(self._max_pool(d), conv("low"), 3, 1, 1)
        low = self._dense(low, conv("expand"), 1, 1, 0)
        s = self._dense(x, conv("full"), 1, 1, 0)
        return self.native.esa_tail(x, s, low, residual)

    def pack_concat_conv(self, weight, bias, chunks: int) -> dict:
        """A 1x1 conv over the concatenation of ``chunks`` equal-width features, split into one
        weight per feature (see concat_conv)."""
        w = weight.detach().float()
        step = w.shape[1] // chunks
        packed = {f"w{i}": _cl(w[:, i * step:(i + 1) * step].contiguous()) for i in range(chunks)}
        packed["b"] = bias.detach().float().clone()
        packed.update({f"gemm_{k}": t for k, t in self._engine_weights(w, bias.detach().float()).items()})
        return packed

    def concat_conv(self, features, p, c_out, act=ACT_NONE, residual=None):
        """act(1x1 conv of cat(features) to c_out channels) [+ residual] without the concatenation: a chain of
        1x1 convs each adding its product to the previous (oneDNN binary post-op). The 216-channel
        concatenation would be a >32 MB tensor, which glibc maps fresh on every call; its page
        faults made cat + conv 2.5x slower here. The conv engine reads the features in one GEMM
        (K spans all of them) with activation and residual in its epilogue."""
        if "gemm_w1" in p:
            return self.native.conv1x1(list(features), p["gemm_w1"], p["gemm_bp"], c_out, act, None, c_out, residual,
                                       RES_NONE if residual is None else RES_TENSOR, None, None, SHORTCUT_NONE, 0)
        acc = self._pointwise(_cl(features[0]), p["w0"], p["b"], [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        for i in range(1, len(features)):
            acc = self._binary(_cl(features[i]), acc, p[f"w{i}"], None, [0, 0], [1, 1], [1, 1], 1, "add",
                               1.0, None, [], "")
        return self.native.conv_epilogue(acc, None, acc.shape[1], act, residual,
                                         RES_TENSOR if residual is not None else RES_NONE, None, None, 0, 0)

    def la_reduce(self, x, p):
        return self._max_pool(self._dense(x, p, 1, 1, 0))

    def _max_pool(self, x):
        if (POOL_KERNEL, POOL_STRIDE) == (7, 3) and x.shape[-2] >= 7 and x.shape[-1] >= 7:
            return self.native.max_pool_7s3(x)
        return F.max_pool2d(x, POOL_KERNEL, POOL_STRIDE)  # raises the reference's error
