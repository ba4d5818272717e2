"""The native CUDA backend (esr_kernels._C_cuda, csrc/cuda): single-kernel BSB, ESA
full-resolution tail and LocalAttention reduction in CUDA C++; dense convolutions (with their
fused prologues and epilogues) stay on the Triton kernels; ESA's small low-resolution branch
runs on cuDNN.

Status: compiled in CI for sm_80/sm_90; not yet run on a GPU in this repository (no device was
available when it was written), so "auto" never picks it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .spec import POOL_KERNEL, POOL_STRIDE
from .triton_backend import TritonBackend


class CudaBackend(TritonBackend):
    name = "cuda"

    def __init__(self):
        super().__init__()
        import esr_kernels._C_cpu  # noqa: F401  defines the esr_native schemas
        import esr_kernels._C_cuda  # noqa: F401  CUDA implementations

        from . import native  # noqa: F401

        self.native = torch.ops.esr_native

    def pack_bsb(self, pointwise: nn.Conv2d, depthwise: nn.Conv2d) -> dict:
        c = pointwise.out_channels
        return {"pw": pointwise.weight.detach().float().reshape(c, c).contiguous(),
                "dw": depthwise.weight.detach().float().reshape(c, 9).contiguous(),
                "b": depthwise.bias.detach().float().contiguous()}

    def bsb(self, x, p, residual=None):
        return self.native.bsb(x, p["pw"], p["dw"], p["b"], residual)

    def pack_la(self, reduce: nn.Conv2d) -> dict:
        cr, c = reduce.weight.shape[:2]
        return {"w": reduce.weight.detach().float().reshape(cr, c).contiguous(),
                "b": reduce.bias.detach().float().contiguous()}

    def la_reduce(self, x, p):
        return self.native.la_reduce(x, p["w"], p["b"])

    def pack_esa(self, esa) -> dict:
        from .packing import fold_esa_skip

        skip_w, skip_b = fold_esa_skip(esa.reduce, esa.skip)
        return {
            "reduce_w": esa.reduce.weight.detach().float(), "reduce_b": esa.reduce.bias.detach().float(),
            "down_w": esa.down.weight.detach().float(), "down_b": esa.down.bias.detach().float(),
            "low_w": esa.low.weight.detach().float(), "low_b": esa.low.bias.detach().float(),
            "skip_w": skip_w.float().contiguous(), "skip_b": skip_b.float(),
            "expand_w": esa.expand.weight.detach().float()[:, :, 0, 0].contiguous(),
            "expand_b": esa.expand.bias.detach().float(),
        }

    def esa(self, x, p, residual=None):
        xf = x.float()
        r = F.conv2d(xf, p["reduce_w"], p["reduce_b"])
        d = F.conv2d(r, p["down_w"], p["down_b"], stride=2)
        low = F.conv2d(F.max_pool2d(d, POOL_KERNEL, POOL_STRIDE), p["low_w"], p["low_b"], padding=1)
        return self.native.esa_out(x, low.contiguous(), p["skip_w"], p["skip_b"], p["expand_w"],
                                   p["expand_b"], residual)
