"""The native CUDA backend (esr_kernels._C_cuda, csrc/cuda): single-kernel BSB, ESA
full-resolution tail and LocalAttention reduction in CUDA C++; dense convolutions (with their
fused prologues and epilogues) run on the Triton kernels (a TritonBackend it delegates to);
ESA's small low-resolution branch runs on cuDNN.

Status: compiled in CI and its per-pixel maths run on CPU in CI; never run on a GPU in this
repository (no device was available when it was written), so "auto" never picks it.
"""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .contract import BsbPack, EsaPack, KernelBackend, LaReducePack
from .extensions import native_ops
from .op_args import EsaWeights
from .spec import POOL_KERNEL, POOL_STRIDE
from .triton_backend import TritonBackend

Tensor = torch.Tensor

# The channel counts the CUDA kernels are instantiated for (csrc/common/channels.h; a test
# checks that the two agree): other widths run the Triton kernels for that op.
CUDA_BSB_CHANNELS = {36}
CUDA_ESA_CHANNELS = {(36, 16), (46, 16)}
CUDA_LA_CHANNELS = {(48, 16)}


@dataclasses.dataclass(frozen=True)
class CudaBsb(BsbPack):
    pw: Tensor  # (C, C) float32 [out][in]
    dw: Tensor  # (C, 9) float32
    b: Tensor   # (C,) float32


@dataclasses.dataclass(frozen=True)
class CudaEsa(EsaPack):
    """The folded weights (``EsaWeights``' shapes) in float32: the low-resolution convs (cuDNN)
    and the tail kernel's folded 1x1 weights."""
    weights: EsaWeights


@dataclasses.dataclass(frozen=True)
class CudaLaReduce(LaReducePack):
    w: Tensor  # (C_r, C) float32
    b: Tensor  # (C_r,) float32


class CudaBackend(KernelBackend):
    name = "cuda"
    devices = ("cuda",)
    dtypes = (torch.float32, torch.float16, torch.bfloat16)

    def __init__(self):
        self.native = native_ops("_C_cuda")
        self.dense = TritonBackend()  # conv and concat_conv

    def supports_conv(self, conv) -> bool:
        return self.dense.supports_conv(conv)

    # ---- dense convolutions: the Triton kernels
    def pack_conv(self, weight, bias, *args, **kwargs):
        return self.dense.pack_conv(weight, bias, *args, **kwargs)

    def pack_concat_conv(self, weight, bias, chunks, *args):
        return self.dense.pack_concat_conv(weight, bias, chunks, *args)

    def conv(self, x, pack, **kwargs):
        return self.dense.conv(x, pack, **kwargs)

    def concat_conv(self, features, pack, *args, **kwargs):
        return self.dense.concat_conv(features, pack, *args, **kwargs)

    # ---- the native CUDA kernels
    def pack_bsb(self, pointwise, depthwise, bias) -> BsbPack:
        c = pointwise.shape[0]
        if c not in CUDA_BSB_CHANNELS:
            return self.dense.pack_bsb(pointwise, depthwise, bias)
        return CudaBsb(channels=c, pw=pointwise.detach().float().reshape(c, c).contiguous(),
                       dw=depthwise.detach().float().reshape(c, 9).contiguous(), b=bias.detach().float().contiguous())

    def bsb(self, x, pack: BsbPack, residual=None):
        if not isinstance(pack, CudaBsb):
            return self.dense.bsb(x, pack, residual)
        return self.native.bsb(x, pack.pw, pack.dw, pack.b, residual)

    def pack_la_reduce(self, weight, bias) -> LaReducePack:
        cr, c = weight.shape[:2]
        if (c, cr) not in CUDA_LA_CHANNELS:
            return self.dense.pack_la_reduce(weight, bias)
        return CudaLaReduce(c_in=c, c_reduce=cr, w=weight.detach().float().reshape(cr, c).contiguous(),
                            b=bias.detach().float().contiguous())

    def la_reduce(self, x, pack: LaReducePack):
        if not isinstance(pack, CudaLaReduce):
            return self.dense.la_reduce(x, pack)
        return self.native.la_reduce(x, pack.w, pack.b)

    def pack_esa(self, e: EsaWeights) -> EsaPack:
        if (e.channels, e.c_reduce) not in CUDA_ESA_CHANNELS:
            return self.dense.pack_esa(e)

        return CudaEsa(channels=e.channels, c_reduce=e.c_reduce,
                       weights=e.map_args(lambda _name, t: t.float().contiguous()))

    def esa(self, x, pack: EsaPack, residual=None):
        if not isinstance(pack, CudaEsa):
            return self.dense.esa(x, pack, residual)
        w = pack.weights
        r = F.conv2d(x.float(), w.reduce_w, w.reduce_b)
        d = F.conv2d(r, w.down_w, w.down_b, stride=2)
        low = F.conv2d(F.max_pool2d(d, POOL_KERNEL, POOL_STRIDE), w.low_w, w.low_b, padding=1)
        return self.native.esa_out(x, low.contiguous(), w.skip_w, w.skip_b, w.expand_w, w.expand_b, residual)
