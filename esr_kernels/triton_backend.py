"""The Triton backend: packs weights for the Triton kernels and calls torch.ops.esr.*."""
from __future__ import annotations

import torch
from torch import nn

from .packing import pack_bias, pack_esa
from .reference import pack_conv_weight


class TritonBackend:
    name = "triton"

    def __deepcopy__(self, memo):
        # Stateless (packs live in the modules' buffers) and holds torch.ops handles, which
        # cannot be copied: a deep copy of a fused model shares its backend.
        return self

    def __init__(self):
        from . import ops  # noqa: F401  registers torch.ops.esr (imports triton)

        self.ops = torch.ops.esr

    # ---- packing (once, at load)
    def pack_conv(self, weight, bias, op_channels=None, weight_scale=1.0) -> dict:
        w = weight.detach()
        packed = pack_conv_weight(w.double() * weight_scale if weight_scale != 1.0 else w, op_channels)
        b = bias.detach().double() * weight_scale if bias is not None else None
        return {"w": packed.to(w.dtype), "b": pack_bias(b, packed.shape[-1], w.device)}

    def pack_bsb(self, pointwise: nn.Conv2d, depthwise: nn.Conv2d) -> dict:
        from .triton.bsb import pack_depthwise

        p = self.pack_conv(pointwise.weight, None)
        return {"pw": p["w"], "dw": pack_depthwise(depthwise.weight.detach(), p["w"].shape[-1]),
                "b": pack_bias(depthwise.bias.detach(), p["w"].shape[-1], p["w"].device)}

    def pack_esa(self, esa) -> dict:
        return pack_esa(esa.reduce, esa.down, esa.low, esa.skip, esa.expand, esa.reduce.weight.dtype)

    def pack_la(self, reduce: nn.Conv2d) -> dict:
        return {"w": pack_conv_weight(reduce.weight.detach()), "b": reduce.bias.detach().float().clone()}

    # ---- ops
    def conv(self, x, p, c_conv, *, c_out=None, ksize=3, stride=1, padding=None, act=0, residual=None,
             residual_mode=0, att=None, gate_input=False, shift=None, shortcut=None, shortcut_mode=0,
             shuffle=0):
        padding = ksize // 2 if padding is None else padding
        return self.ops.conv(x, p["w"], p["b"], c_conv, c_out or c_conv, ksize, stride, padding, act,
                             residual, residual_mode, att, gate_input, shift, shortcut, shortcut_mode,
                             shuffle)

    def bsb(self, x, p, residual=None):
        return self.ops.bsb(x, p["pw"], p["dw"], p["b"], residual)

    def esa(self, x, p, residual=None):
        names = ("reduce_w", "reduce_b", "down_w", "down_b", "low_w", "low_b", "skip_w", "skip_b",
                 "expand_w", "expand_b")
        return self.ops.esa(x, *(p[n] for n in names), residual)

    def pack_concat_conv(self, weight, bias, chunks: int) -> dict:
        return self.pack_conv(weight, bias)

    def concat_conv(self, features, p, c_out, act=0, residual=None):
        """act(1x1 conv of cat(features) to c_out channels) [+ residual]."""
        from .spec import RES_NONE, RES_TENSOR

        return self.conv(torch.cat(features, dim=1), p, c_out, ksize=1, act=act, residual=residual,
                         residual_mode=RES_TENSOR if residual is not None else RES_NONE)

    def la_reduce(self, x, p):
        return self.ops.la_reduce(x, p["w"], p["b"])

