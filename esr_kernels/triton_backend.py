"""The Triton backend: packs weights for the Triton kernels and calls torch.ops.esr.*
(``esr_kernels.ops``; the kernels in ``esr_kernels/triton``). On CUDA tensors, or on CPU
tensors under Triton's interpreter (TRITON_INTERPRET=1: correctness only)."""
from __future__ import annotations

import dataclasses
from typing import Optional

import torch
from torch import nn

from .contract import BsbPack, ConcatConvPack, ConvPack, EsaPack, KernelBackend, LaReducePack
from .op_args import CONV, ESA, ConvEpilogue, EsaWeights
from .packing import pack_bias, pack_esa
from .reference import pack_conv_weight
from .spec import RES_NONE

Tensor = torch.Tensor

# The conv kernel keeps all output channels of a pixel block in one tile.
MAX_CONV_OUT_CHANNELS = 64


@dataclasses.dataclass(frozen=True)
class TritonConv(ConvPack):
    w: Tensor  # (K*K, C_in, CO_pad) in the model's dtype (reference.pack_conv_weight)
    b: Tensor  # (CO_pad,) float32, zero past c_conv


@dataclasses.dataclass(frozen=True)
class TritonBsb(BsbPack):
    pw: Tensor  # (1, C, CO_pad) pointwise
    dw: Tensor  # (9, CO_pad) float32 depthwise taps
    b: Tensor   # (CO_pad,) float32


@dataclasses.dataclass(frozen=True)
class TritonEsa(EsaPack):
    weights: EsaWeights  # esr::esa's weight arguments (packing.pack_esa)


@dataclasses.dataclass(frozen=True)
class TritonLaReduce(LaReducePack):
    w: Tensor  # (1, C, CR_pad)
    b: Tensor  # (C_r,) float32


@dataclasses.dataclass(frozen=True)
class TritonConcatConv(ConcatConvPack):
    conv: TritonConv  # the 1x1 conv's weights over all the features' channels


class TritonBackend(KernelBackend):
    name = "triton"
    devices = ("cuda", "cpu")  # cpu: the interpreter
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def __init__(self):
        from . import ops  # noqa: F401  registers torch.ops.esr (imports triton)

        self.ops = torch.ops.esr

    @property
    def gate_in_conv(self) -> bool:
        """Read when a model is packed: v1's convs gate their input on load (the gated tensor
        never hits memory); v2's multiply straight from memory, so with v2 chosen the gate is
        stored once (esr::gate) and the convs around it are plain v2 ones."""
        from .triton.configs import conv_choice

        return conv_choice() != "v2"

    def supports_conv(self, conv: nn.Conv2d) -> bool:
        return conv.out_channels <= MAX_CONV_OUT_CHANNELS

    # ---- packing (once, at load)
    def pack_conv(self, weight, bias, epilogue=ConvEpilogue(), *, c_out=None, stride=1, padding=None,
                  weight_scale=1.0) -> TritonConv:
        w = weight.detach()
        c_conv, c_in, k = w.shape[0], w.shape[1], w.shape[-1]
        scaled = w.double() * weight_scale if weight_scale != 1.0 else w
        packed = pack_conv_weight(scaled, c_out).to(w.dtype)
        b = bias.detach().double() * weight_scale if bias is not None else None
        return TritonConv(c_conv=c_conv, c_out=c_out or c_conv, ksize=k, stride=stride,
                          padding=k // 2 if padding is None else padding, c_in=c_in, epilogue=epilogue,
                          w=packed, b=pack_bias(b, packed.shape[-1], w.device))

    def pack_bsb(self, pointwise, depthwise, bias) -> TritonBsb:
        from .triton.bsb import pack_depthwise

        c = pointwise.shape[0]
        pw = pack_conv_weight(pointwise.detach())
        return TritonBsb(channels=c, pw=pw, dw=pack_depthwise(depthwise.detach(), pw.shape[-1]),
                         b=pack_bias(bias.detach(), pw.shape[-1], pw.device))

    def pack_esa(self, weights: EsaWeights) -> TritonEsa:
        return TritonEsa(channels=weights.channels, c_reduce=weights.c_reduce, weights=pack_esa(weights))

    def pack_la_reduce(self, weight, bias) -> TritonLaReduce:
        return TritonLaReduce(c_in=weight.shape[1], c_reduce=weight.shape[0], w=pack_conv_weight(weight.detach()),
                              b=bias.detach().float().clone())

    def pack_concat_conv(self, weight, bias, chunks, epilogue=ConvEpilogue()) -> TritonConcatConv:
        return TritonConcatConv(c_out=weight.shape[0], chunks=chunks, epilogue=epilogue,
                                conv=self.pack_conv(weight, bias, epilogue))

    # ---- ops
    def conv(self, x, pack: TritonConv, **tensors):
        """``tensors``: the epilogue's, by name (``KernelBackend.conv``)."""
        return self.ops.conv(*CONV.join(x, pack.w, pack.b, pack, pack.epilogue, **tensors))

    def bsb(self, x, pack: TritonBsb, residual=None):
        return self.ops.bsb(x, pack.pw, pack.dw, pack.b, residual)

    def esa(self, x, pack: TritonEsa, residual=None):
        return self.ops.esa(*ESA.join(x, pack.weights, residual))

    def gate(self, x, att):
        return self.ops.gate(x, att)

    def la_reduce(self, x, pack: TritonLaReduce):
        return self.ops.la_reduce(x, pack.w, pack.b)

    def concat_conv(self, features, pack: TritonConcatConv, residual: Optional[Tensor] = None):
        """esr::concat_conv reads the features where they lie (v1, up to six features); under
        the v2 conv (ESR_TRITON_CONV=v2) the concatenation is made and its tensor-core conv
        runs on it, as before (a multi-input v2 conv is not written yet)."""
        from .triton.concat_conv import MAX_FEATURES
        from .triton.configs import conv_choice

        if conv_choice() == "v2" or len(features) > MAX_FEATURES:
            return self.conv(torch.cat(list(features), dim=1), pack.conv, residual=residual)
        mode = pack.epilogue.residual_mode if residual is not None else RES_NONE
        return self.ops.concat_conv(list(features), pack.conv.w, pack.conv.b, pack.c_out, pack.epilogue.act,
                                    mode, residual)
