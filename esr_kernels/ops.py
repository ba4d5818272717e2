"""The public ops ``esr::conv``, ``esr::bsb``, ``esr::esa``, ``esr::la_reduce``, registered
with torch.library as Triton ops (``triton_op`` + ``wrap_triton``), so torch.compile
(fullgraph) and CUDA graphs see through them.

Importing this module imports triton. On CPU tensors the kernels run only under Triton's
interpreter (``TRITON_INTERPRET=1`` set before triton is first imported).

Weights are passed packed (``esr_kernels.packing``): packing happens once, at model load.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.library import triton_op, wrap_triton

from .triton.bsb import _bsb_kernel, bsb_launch
from .triton.conv import _conv_kernel, conv_launch, conv_out_shape
from .triton.esa import esa_launch, esa_shapes
from .triton.la_reduce import _la_reduce_kernel, la_reduce_launch
from .spec import POOL_KERNEL, POOL_STRIDE


def _like(x: torch.Tensor, shape) -> torch.Tensor:
    """Output in x's layout (channels_last in, channels_last out)."""
    fmt = torch.channels_last if (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
                                  and not x.is_contiguous()) else torch.contiguous_format
    return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=fmt)


@triton_op("esr::conv", mutates_args=())
def conv(x: torch.Tensor, w_packed: torch.Tensor, bias: torch.Tensor, c_conv: int, c_out: int,
         ksize: int, stride: int, padding: int, act: int, residual: Optional[torch.Tensor],
         residual_mode: int, att: Optional[torch.Tensor], gate_input: bool, shift: Optional[torch.Tensor],
         shortcut: Optional[torch.Tensor], shortcut_mode: int, shuffle: int) -> torch.Tensor:
    """Fused dense conv; semantics in ``esr_kernels.reference.conv``. x (N, C_in, H, W) any
    layout; output (N, c_out, H', W') in x's layout, or (N, c_out / r^2, r H', r W') NCHW when
    ``shuffle`` = r > 0."""
    shape = conv_out_shape(x.shape, c_out, ksize, stride, padding, shuffle)
    out = torch.empty(shape, dtype=x.dtype, device=x.device) if shuffle else _like(x, shape)
    return conv_launch(wrap_triton(_conv_kernel), x, w_packed, bias, c_conv, c_out, ksize, stride,
                       padding, act, residual, residual_mode, att, gate_input, shift, shortcut, shortcut_mode,
                       shuffle, out)


@triton_op("esr::bsb", mutates_args=())
def bsb(x: torch.Tensor, pw_packed: torch.Tensor, dw_packed: torch.Tensor, dw_bias: torch.Tensor,
        residual: Optional[torch.Tensor]) -> torch.Tensor:
    """GELU(depthwise3x3_reflect(pointwise1x1(x)) + bias) [+ residual]; x (N, C, H, W), H, W >= 2."""
    out = _like(x, x.shape)
    return bsb_launch(wrap_triton(_bsb_kernel), x, pw_packed, dw_packed, dw_bias, residual, out)


@triton_op("esr::esa", mutates_args=())
def esa(x: torch.Tensor, reduce_w: torch.Tensor, reduce_b: torch.Tensor, down_w: torch.Tensor,
        down_b: torch.Tensor, low_w: torch.Tensor, low_b: torch.Tensor, skip_w: torch.Tensor,
        skip_b: torch.Tensor, expand_w: torch.Tensor, expand_b: torch.Tensor,
        residual: Optional[torch.Tensor]) -> torch.Tensor:
    """ESA [+ residual] on x (N, C, H, W), H, W >= 15; ``skip_w``/``skip_b`` are the 1x1 branch
    folded with the reduction (skip(reduce(x)) as one 1x1 conv)."""
    n, _, h, w = x.shape
    (h2, w2), (hp, wp) = esa_shapes(h, w)
    cr = reduce_w.shape[-1]
    d = torch.empty((n, cr, h2, w2), dtype=torch.float32, device=x.device)
    low = torch.empty((n, cr, hp, wp), dtype=torch.float32, device=x.device)
    out = _like(x, x.shape)
    return esa_launch(wrap_triton, x, reduce_w, reduce_b, down_w, down_b, low_w, low_b, skip_w,
                      skip_b, expand_w, expand_b, residual, out, d, low)


@triton_op("esr::la_reduce", mutates_args=())
def la_reduce(x: torch.Tensor, reduce_w: torch.Tensor, reduce_b: torch.Tensor) -> torch.Tensor:
    """max_pool 7/3 (no padding) of a 1x1 conv; x (N, C, H, W), H, W >= 7 -> (N, C_r, Hp, Wp)."""
    n, _, h, w = x.shape
    c_red = reduce_b.shape[0]
    hp, wp = (h - POOL_KERNEL) // POOL_STRIDE + 1, (w - POOL_KERNEL) // POOL_STRIDE + 1
    out = torch.empty((n, c_red, hp, wp), dtype=x.dtype, device=x.device)
    return la_reduce_launch(wrap_triton(_la_reduce_kernel), x, reduce_w, reduce_b, c_red, out)
