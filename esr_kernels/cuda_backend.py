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

from .contract import BsbPack, EsaPack, EsaWeights, KernelBackend, LaReducePack
from .extensions import native_ops
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
    """float32: the low-resolution convs (cuDNN) and the tail kernel's folded 1x1 weights."""
    reduce_w: Tensor  # (C_r, C, 1, 1)
    reduce_b: Tensor
    down_w: Tensor    # (C_r, C_r, 3, 3)
    down_b: Tensor
    low_w: Tensor     # (C_r, C_r, 3, 3)
    low_b: Tensor
    skip_w: Tensor    # (C_r, C): skip @ reduce
    skip_b: Tensor
    expand_w: Tensor  # (C, C_r)
    expand_b: Tensor


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
    def pack_conv(self, weight, bias, **kwargs):
        return self.dense.pack_conv(weight, bias, **kwargs)

    def pack_concat_conv(self, weight, bias, chunks):
        return self.dense.pack_concat_conv(weight, bias, chunks)

    def conv(self, x, pack, **kwargs):
        return self.dense.conv(x, pack, **kwargs)

    def concat_conv(self, features, pack, **kwargs):
        return self.dense.concat_conv(features, pack, **kwargs)

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

        def f(t):
            return t.float().contiguous()

        return CudaEsa(channels=e.channels, c_reduce=e.c_reduce, reduce_w=f(e.reduce_w), reduce_b=f(e.reduce_b),
                       down_w=f(e.down_w), down_b=f(e.down_b), low_w=f(e.low_w), low_b=f(e.low_b),
                       skip_w=f(e.skip_w), skip_b=f(e.skip_b), expand_w=f(e.expand_w), expand_b=f(e.expand_b))

    def esa(self, x, pack: EsaPack, residual=None):
        if not isinstance(pack, CudaEsa):
            return self.dense.esa(x, pack, residual)
        r = F.conv2d(x.float(), pack.reduce_w, pack.reduce_b)
        d = F.conv2d(r, pack.down_w, pack.down_b, stride=2)
        low = F.conv2d(F.max_pool2d(d, POOL_KERNEL, POOL_STRIDE), pack.low_w, pack.low_b, padding=1)
        return self.native.esa_out(x, low.contiguous(), pack.skip_w, pack.skip_b, pack.expand_w, pack.expand_b,
                                   residual)
