"""The native CPU backend, float32 channels_last throughout, all in the C++ kernels of
``esr_kernels._C_cpu`` (torch.ops.esr_native.*):
- dense convolutions: stride-1 3x3 by Winograd F(2x2, 3x3), 1x1 as register-blocked GEMMs and
  the 3x3 of RGB inputs (the heads) and strided 3x3 as GEMMs over im2col rows (the conv engine,
  csrc/cpu/winograd.cpp and conv1x1.cpp, at the avx2 and avx512 ISA levels) with bias,
  activation and residual fused; at the baseline level, oneDNN's convolutions (PyTorch's
  mkldnn, activation fused as a post-op);
- around them: the LocalAttention gate, the reflect-padded depthwise + GELU of BSB, the conv
  epilogues (partial channels, gated residual, shortcut + pixel shuffle) and the ESA tail.
Kernel outputs come from a size-keyed buffer cache (csrc/cpu/buffer_cache.h), which removes
the page faults of fresh multi-megabyte allocations.

ESA is folded at load: the gate logits are expand(up(low) + skip(reduce(x))) and every map in
it is linear, so they become one full-resolution 1x1 conv of x plus the bilinear upsample of the
low-resolution branch already expanded to C channels (bilinear interpolation commutes with a
1x1 conv): two full-resolution passes (a 1x1 conv, the tail) instead of five; with the conv
engine, one (esa_gate_1x1: the 1x1 conv and the gate per block of pixels, the logits never
stored), besides the reduction that feeds the low-resolution branch.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Optional

import torch
import torch.nn.functional as F

from .contract import BsbPack, ConcatConvPack, ConvEsaPack, ConvPack, EsaPack, KernelBackend, LaReducePack
from .extensions import bf16_direct_3x3, bf16_gemm_available, native_ops
from .op_args import ConvEpilogue, EsaWeights
from .packing import (fold_esa_input_conv, pack_bsb_cpu, pack_direct_3x3_bf16, pack_gemm_1x1, pack_im2col_3x3,
                      pack_winograd_3x3, pad_vector, round_up16, vnni_pairs)
from .spec import (ACT_GELU, ACT_LEAKY, ACT_NONE, ACT_SIGMOID, ACT_SILU, LEAKY_SLOPE, POOL_KERNEL,
                   POOL_STRIDE, RES_NONE, SHORTCUT_NONE)

Tensor = torch.Tensor

# oneDNN post-op names for the activations it can fuse into a convolution.
_ONEDNN_ACT = {ACT_NONE: ("none", [], ""), ACT_GELU: ("gelu", [], "none"),
               ACT_SILU: ("swish", [], ""), ACT_LEAKY: ("leaky_relu", [LEAKY_SLOPE], ""),
               ACT_SIGMOID: ("sigmoid", [], "")}


def _cl(x: Tensor) -> Tensor:
    """x as float32 channels_last: oneDNN's layout, and the precision of the activations here
    (a bfloat16 or float16 model's input is converted once, at its first conv)."""
    return x.to(torch.float32).contiguous(memory_format=torch.channels_last)


def padded_channels(c: int) -> int:
    """oneDNN's fp32 kernels and the conv engine run AVX-512 lanes of 16 channels: RLFN's 46
    channels measured 4% slower end to end than 48 (256x256, interleaved). Feature widths
    within 10% under a multiple of 16 are zero-padded up to it inside this backend (packed
    weights and biases zero there, so the padded channels of every output are exactly zero:
    LeakyReLU(0) = 0, residual sums, the ESA gate 0 * sigmoid(0)). The fused modules never see
    it: outputs are narrowed views (see ``_widen``)."""
    up = (c + 15) // 16 * 16
    # Feature maps only (<= 64 channels): wider inputs are concatenations of unpadded features.
    return up if c <= 64 and (up - c) * 10 <= c else c


def _widen(x: Tensor, c: int) -> Tensor:
    """x (N, C, H, W) with C <= c -> (N, c, H, W) for a packed weight that reads c channels.
    This backend's own padded outputs reach the next op as narrowed channels_last views whose
    storage still holds the zero padding: those are widened back without a copy. Anything
    else is zero-padded (a copy). A foreign view that happens to look the same is widened too:
    the extra channels meet zero weights, so they cannot change the result unless they hold
    Inf or NaN."""
    n, cx, h, w = x.shape
    if cx == c:
        return x
    if x.stride() == (c * h * w, 1, c * w, c):
        # as_strided checks the storage bounds (an error, never a read past the end).
        return x.as_strided((n, c, h, w), x.stride())
    return _cl(F.pad(x, (0, 0, 0, 0, 0, c - cx)))


def _narrow(y: Tensor, c: int) -> Tensor:
    return y if y.shape[1] == c else y[:, :c]


@dataclasses.dataclass(frozen=True)
class CpuConv(ConvPack):
    """c_conv / c_out / c_in: the model's channels; c_pad / c_in_pad: what the weights compute and read."""
    c_pad: int
    c_in_pad: int
    w: Tensor                 # (C_pad, C_in_pad, K, K) float32 channels_last (oneDNN)
    b: Tensor                 # (C_pad,) float32
    u: Optional[Tensor]       # conv engine, 3x3: Winograd (16, C_in_pad, C_outP), or None
    wi: Optional[Tensor]      # conv engine, 3x3 of < 8 input channels or stride > 1: im2col GEMM (9 C_in, C_outP)
    wd: Optional[Tensor]      # conv engine, bf16 3x3 beside u: the direct conv's taps (3, 9 C_in / 2, 2 C_outP)
    w1: Optional[Tensor]      # conv engine, 1x1: (C_in_pad, C_outP), or None
    bp: Optional[Tensor]      # the engine's bias (C_outP,), or None


@dataclasses.dataclass(frozen=True)
class CpuBsbEngine(BsbPack):
    """esr_native::bsb_packed: pointwise, depthwise and GELU in one pass."""
    pw: Tensor    # (C, CP)
    taps: Tensor  # (9, L), L = lcm(C, 16)
    bias: Tensor  # (L,)


@dataclasses.dataclass(frozen=True)
class CpuBsbOneDnn(BsbPack):
    """oneDNN pointwise conv, then esr_native::bsb_dw (builds without the conv engine)."""
    pw: Tensor  # (C, C, 1, 1) channels_last
    dw: Tensor  # (C, 1, 3, 3)
    b: Tensor   # (C,)


@dataclasses.dataclass(frozen=True)
class CpuEsa(EsaPack):
    """ESA folded for two full-resolution passes (see the module docstring): gate logits =
    full(x) + up(expand(low(pool(down(reduce(x)))))). ``full`` is None inside a CpuConvEsa,
    whose GEMM carries it."""
    c_pad: int
    reduce: CpuConv
    down: CpuConv
    low: CpuConv
    expand: CpuConv
    full: Optional[CpuConv]


@dataclasses.dataclass(frozen=True)
class CpuConvEsa(ConvEsaPack):
    """A 1x1 conv folded into the ESA after it (conv engine): ``esa`` holds the ESA's weights as
    maps of the conv's input (packing.fold_esa_input_conv), ``both`` the conv and the gate
    logits' 1x1 side by side, one GEMM for esa_gate_1x1's input_conv mode: the conv's output is
    never stored."""
    esa: CpuEsa
    both: CpuConv


@dataclasses.dataclass(frozen=True)
class CpuLaReduce(LaReducePack):
    conv: CpuConv


@dataclasses.dataclass(frozen=True)
class CpuConcatConv(ConcatConvPack):
    parts: tuple  # one (C_out, C, 1, 1) channels_last weight per feature (oneDNN chain)
    b: Tensor
    w1: Optional[Tensor]  # conv engine: one (chunks * C, C_outP) GEMM weight over all features
    bp: Optional[Tensor]


class CpuBackend(KernelBackend):
    """Models of every dtype run float32 activations (residual streams, transforms, epilogues)
    and return the model's dtype. A bfloat16 model's conv-engine GEMMs run in bf16 (bf16 operands,
    float32 accumulation: csrc/cpu/gemm_bf16.h) at ISA levels with vdpbf16ps (avx512_bf16, amx);
    elsewhere, and for float16, its (exactly representable) weights run the float32 kernels
    (policy.cpu_dtype_note says which, for `esr backends` and the load-time note)."""
    name = "cpu"
    devices = ("cpu",)
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    # The gate is stored (native gate op) and read back as the last conv's residual: measured on
    # PFDNLite bf16 (256x256, 2 threads), its recomputation in that conv's epilogue cost 1.8 ms
    # of the conv's 8.1, the stored tensor's read far less.
    gate_in_conv = False

    def __init__(self):
        self.native = native_ops("_C_cpu")
        self._pointwise = torch.ops.mkldnn._convolution_pointwise
        self._binary = torch.ops.mkldnn._convolution_pointwise.binary
        # The Winograd / GEMM conv engine runs at the avx2 and avx512 ISA levels (chosen at run
        # time from the CPU, csrc/cpu/dispatch.cpp; ESR_CPU_ISA forces a lower one);
        # ESR_CPU_CONV_ENGINE=0 keeps oneDNN's convolutions (for comparison).
        self.engine = (bool(self.native.conv_engine_available())
                       and os.environ.get("ESR_CPU_CONV_ENGINE", "1") != "0")
        self.bf16_engine = self.engine and bf16_gemm_available()

    def _bf16(self, dtype: torch.dtype) -> bool:
        """Whether a model of ``dtype`` gets the bf16 GEMM weights."""
        return dtype == torch.bfloat16 and self.bf16_engine

    # ---- packing (once, at load)
    def pack_conv(self, weight, bias, epilogue=ConvEpilogue(), *, c_out=None, stride=1, padding=None,
                  weight_scale=1.0) -> CpuConv:
        w = weight.detach().double() * weight_scale
        b = bias.detach().double() * weight_scale if bias is not None else None
        k = w.shape[-1]
        # Partial convs (c_out) keep their layout: their passthrough channels are real.
        return self._dense(w, b, stride, k // 2 if padding is None else padding, pad=c_out is None,
                           bf16=self._bf16(weight.dtype) and not epilogue.output_layer, c_out=c_out,
                           epilogue=epilogue)

    def _dense(self, w: Tensor, b: Optional[Tensor], stride: int, padding: int, pad: bool = True,
               bf16: bool = False, c_out: Optional[int] = None, epilogue: ConvEpilogue = ConvEpilogue()) -> CpuConv:
        """A float64 (C_conv, C_in, K, K) weight -> CpuConv, zero-padded on both sides to
        padded_channels if ``pad``, rounded once to float32 (the conv engine's weights to bf16
        pairs if ``bf16``); ``c_out`` (default C_conv), ``epilogue``: the op's."""
        co, ci, k = w.shape[0], w.shape[1], w.shape[-1]
        pco, pci = (padded_channels(co), padded_channels(ci)) if pad else (co, ci)
        wp = w.new_zeros((pco, pci, k, k))
        wp[:co, :ci] = w
        bp = w.new_zeros(pco)
        if b is not None:
            bp[:co] = b
        wp, bp = wp.float(), bp.float()
        engine = self._engine_weights(wp, bp, bf16, stride=stride)
        return CpuConv(c_conv=co, c_out=c_out or co, ksize=k, stride=stride, padding=padding, c_in=ci,
                       epilogue=epilogue, c_pad=pco, c_in_pad=pci, w=_cl(wp), b=bp, **engine)

    def _engine_weights(self, w: Tensor, b: Tensor, bf16: bool = False, chunks: int = 1, stride: int = 1) -> dict:
        """The conv engine's layouts of a (C_out, C_in, k, k) weight of ``stride``, next to
        oneDNN's; with ``bf16``, its GEMM weights as bf16 pairs (a 1x1 over ``chunks``
        concatenated inputs pairs each input's channels on its own)."""
        none = {"u": None, "wi": None, "wd": None, "w1": None, "bp": None}
        if not self.engine or w.shape[-1] not in (1, 3):
            return none
        bp = pad_vector(b, round_up16(w.shape[0]), w)
        if w.shape[-1] == 3 and (w.shape[1] < 8 or stride != 1):
            # The im2col GEMM, float32 in every dtype (the head and the attention branches' stride-2
            # convs stay float32). An RGB head conv would be mostly Winograd transforms for 3
            # channels of GEMM (2.7 ms at 256x256); oneDNN's direct conv measured 1.7-4.6 ms in
            # the models, the im2col GEMM 1.9 (2 threads).
            return {**none, "wi": pack_im2col_3x3(w), "bp": bp}
        if w.shape[-1] == 3:
            # bf16: also the direct conv's taps, which run instead where the GEMMs are on AMX
            # tiles (extensions.bf16_direct_3x3; a few KB per conv).
            u = pack_winograd_3x3(w)
            return {**none, "u": vnni_pairs(u) if bf16 else u, "wd": pack_direct_3x3_bf16(w) if bf16 else None,
                    "bp": bp}
        w1 = pack_gemm_1x1(w)
        return {**none, "w1": vnni_pairs(w1, (w.shape[1] // chunks,) * chunks) if bf16 else w1, "bp": bp}

    def pack_bsb(self, pointwise, depthwise, bias) -> BsbPack:
        c = pointwise.shape[0]
        if self.engine:  # pointwise, depthwise and GELU in one pass (csrc/cpu/bsb_fused.cpp)
            packed = pack_bsb_cpu(pointwise, depthwise, bias)
            if self._bf16(pointwise.dtype):
                packed["pw"] = vnni_pairs(packed["pw"])
            return CpuBsbEngine(channels=c, **packed)
        return CpuBsbOneDnn(channels=c, pw=_cl(pointwise.detach().float()), dw=depthwise.detach().float().clone(),
                            b=bias.detach().float().clone())

    def pack_esa(self, e: EsaWeights, *, full: bool = True) -> CpuEsa:
        """``full``: also pack the gate logits' full-resolution 1x1 (pack_conv_esa packs its own)."""
        bf16 = self._bf16(e.dtype)
        return CpuEsa(
            channels=e.channels, c_reduce=e.c_reduce, c_pad=padded_channels(e.channels),
            reduce=self._dense(e.reduce_w, e.reduce_b, 1, 0, bf16=bf16),
            down=self._dense(e.down_w, e.down_b, 2, 0),
            low=self._dense(e.low_w, e.low_b, 1, 1, bf16=bf16),
            # gate logits = full(x) + up(expand(low)): bilinear interpolation commutes with a 1x1 conv.
            expand=self._dense(e.expand_w[:, :, None, None], None, 1, 0, bf16=bf16),
            full=self._dense(e.gate_w[:, :, None, None], e.gate_b, 1, 0, bf16=bf16) if full else None)

    def pack_conv_esa(self, weight, bias, esa: EsaWeights) -> ConvEsaPack:
        c = weight.shape[0]
        if not self.engine:
            return super().pack_conv_esa(weight, bias, esa)
        folded = fold_esa_input_conv(esa, weight, bias)
        inner = self.pack_esa(folded, full=False)
        # [the conv | the gate logits' 1x1 through it (folded.gate_w)], each padded to cp outputs and
        # inputs (x arrives widened to cp channels; the padded outputs are zero, so is their gate).
        cp = inner.c_pad
        both_w = weight.detach().double().new_zeros(2 * cp, cp, 1, 1)
        both_w[:c, :c] = weight.detach().double()
        both_w[cp:cp + c, :c] = folded.gate_w[:, :, None, None]
        both_b = both_w.new_zeros(2 * cp)
        both_b[:c] = bias.detach().double()
        both_b[cp:cp + c] = folded.gate_b
        both = self._dense(both_w, both_b, 1, 0, pad=False, bf16=self._bf16(esa.dtype))
        return CpuConvEsa(channels=c, esa=inner, both=both)

    def conv_esa(self, x, pack: ConvEsaPack, residual=None):
        if not isinstance(pack, CpuConvEsa):
            return super().conv_esa(x, pack, residual)
        e = pack.esa
        x = _widen(x, e.c_pad)
        if residual is not None:
            residual = _widen(residual, e.c_pad)
        low = self._low_branch(x, e)
        return _narrow(self.native.esa_gate_1x1(x, pack.both.w1, pack.both.bp, low, residual, True), pack.channels)

    def pack_la_reduce(self, weight, bias) -> CpuLaReduce:
        conv = self._dense(weight.detach().double(), bias.detach().double(), 1, 0, bf16=self._bf16(weight.dtype))
        return CpuLaReduce(c_in=weight.shape[1], c_reduce=weight.shape[0], conv=conv)

    def pack_concat_conv(self, weight, bias, chunks, epilogue=ConvEpilogue()) -> CpuConcatConv:
        w = weight.detach().float()
        b = bias.detach().float().clone()
        step = w.shape[1] // chunks
        parts = tuple(_cl(w[:, i * step:(i + 1) * step].contiguous()) for i in range(chunks))
        engine = self._engine_weights(w, b, self._bf16(weight.dtype), chunks)
        return CpuConcatConv(c_out=w.shape[0], chunks=chunks, epilogue=epilogue, parts=parts, b=b, w1=engine["w1"],
                             bp=engine["bp"])

    # ---- ops
    def _run(self, x, p: CpuConv, *, passthrough=None, c_out=None, residual=None, att=None, shortcut=None):
        """act(conv(x) + bias) and the conv epilogue (csrc/cpu/epilogue.h: partial channels,
        residual or gated residual, shortcut + pixel shuffle; the pack's ``epilogue`` less its
        prologue, which ``conv`` applies), in the pack's padded channels: fused into the conv
        engine where it applies, else a oneDNN conv (activation as its post-op) and the
        conv_epilogue op."""
        c_conv, e = p.c_pad, p.epilogue
        epilogue = (passthrough, c_out or c_conv, residual, e.residual_mode, att, shortcut, e.shortcut_mode, e.shuffle)
        if p.wi is not None:
            return self.native.conv3x3_im2col(x, p.wi, p.bp, p.stride, p.padding, c_conv, e.act, *epilogue)
        if p.stride == 1 and p.padding == p.ksize // 2:
            if p.wd is not None and bf16_direct_3x3():
                return self.native.conv3x3_im2col(x, p.wd, p.bp, 1, 1, c_conv, e.act, *epilogue)
            if p.u is not None:
                return self.native.conv3x3_winograd(x, p.u, p.bp, c_conv, e.act, *epilogue)
            if p.w1 is not None:
                return self.native.conv1x1([x], p.w1, p.bp, c_conv, e.act, *epilogue)
        attr, scalars, algorithm = _ONEDNN_ACT[e.act]
        # The oneDNN path (ISA levels without the conv engine). Measured against F.conv2d + the
        # activation in the C++ epilogue: the fused post-op was faster for every model.
        y = self._pointwise(_cl(x), p.w, p.b, [p.padding, p.padding], [p.stride, p.stride], [1, 1], 1,
                            attr, scalars, algorithm)
        if (epilogue[1] == c_conv and e.residual_mode == RES_NONE and e.shortcut_mode == SHORTCUT_NONE
                and e.shuffle == 0):
            return y
        return self.native.conv_epilogue(y, passthrough, epilogue[1], ACT_NONE, *epilogue[2:])

    def conv(self, x, pack: CpuConv, *, residual=None, att=None, shift=None, shortcut=None):
        partial = pack.c_out > pack.c_conv
        xin = _widen(x, pack.c_in_pad) if x.shape[1] < pack.c_in_pad else x
        if shift is not None:
            xin = xin - shift.view(1, -1, 1, 1)
        if pack.epilogue.gate_input:
            xin = self.native.gate(xin, att)
        conv_in = xin if pack.c_in_pad == xin.shape[1] else xin[:, :pack.c_in_pad]
        width = pack.c_out if partial else pack.c_pad
        if residual is not None and residual.shape[1] < width:
            residual = _widen(residual, width)
        y = self._run(conv_in, pack, passthrough=xin if partial else None, c_out=width, residual=residual, att=att,
                      shortcut=shortcut)
        return y if pack.epilogue.shuffle else _narrow(y, pack.c_out)

    def bsb(self, x, pack: BsbPack, residual=None):
        if isinstance(pack, CpuBsbEngine):
            return self.native.bsb_packed(x, pack.pw, pack.taps, pack.bias, residual)
        pw = self._pointwise(_cl(x), pack.pw, None, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        return self.native.bsb_dw(pw, pack.dw, pack.b, residual)

    def esa(self, x, pack: CpuEsa, residual=None):
        x = _widen(x, pack.c_pad)
        if residual is not None:
            residual = _widen(residual, pack.c_pad)
        low = self._low_branch(x, pack)
        if pack.full.w1 is not None:  # the full-resolution branch and the gate in one pass
            return _narrow(self.native.esa_gate_1x1(x, pack.full.w1, pack.full.bp, low, residual, False),
                           pack.channels)
        s = self._run(x, pack.full)
        return _narrow(self.native.esa_tail(x, s, low, residual), pack.channels)

    def _low_branch(self, x, pack: CpuEsa):
        """ESA's low-resolution branch, expanded to C channels: expand(low(pool(down(reduce x))))."""
        d = self._run(self._run(x, pack.reduce), pack.down)
        return self._run(self._run(self._max_pool(d), pack.low), pack.expand)

    def concat_conv(self, features, pack: CpuConcatConv, residual=None):
        """act(1x1 conv of cat(features) to c_out channels) [+ residual] without the
        concatenation. The 216-channel concatenation would be a >32 MB tensor, which glibc
        maps fresh on every call; its page faults made cat + conv 2.5x slower here. The conv
        engine reads the features in one GEMM (K spans all of them) with activation and
        residual in its epilogue; without it, a chain of oneDNN 1x1 convs each adding its
        product to the previous (binary post-op)."""
        act, mode = pack.epilogue.act, pack.epilogue.residual_mode
        if pack.w1 is not None:
            return self.native.conv1x1(list(features), pack.w1, pack.bp, pack.c_out, act, None, pack.c_out,
                                       residual, mode, None, None, SHORTCUT_NONE, 0)
        acc = self._pointwise(_cl(features[0]), pack.parts[0], pack.b, [0, 0], [1, 1], [1, 1], 1, "none", [], "")
        for f, w in zip(features[1:], pack.parts[1:]):
            acc = self._binary(_cl(f), acc, w, None, [0, 0], [1, 1], [1, 1], 1, "add", 1.0, None, [], "")
        return self.native.conv_epilogue(acc, None, acc.shape[1], act, residual, mode, None, None, 0, 0)

    def gate(self, x, att):
        return self.native.gate(x, att)

    def la_reduce(self, x, pack: CpuLaReduce):
        return self._max_pool(self._run(_widen(x, pack.conv.c_in_pad), pack.conv))

    def _max_pool(self, x):
        if x.shape[-2] >= POOL_KERNEL and x.shape[-1] >= POOL_KERNEL:
            return self.native.max_pool_7s3(x)
        return F.max_pool2d(x, POOL_KERNEL, POOL_STRIDE)  # raises the reference's error
