"""LocalAttention reduction: 1x1 conv (C -> 16) and max-pool 7/3 (no padding) fused; the
reduced full-resolution map never goes to memory. Each program owns BLOCK_P pooled pixels and
takes the max over its 49 window positions of the 1x1 conv evaluated there."""
import torch
import triton
import triton.language as tl

from ..spec import POOL_KERNEL, POOL_STRIDE
from .common import dot_precision, launch_arch, mma, program_pixels
from .configs import launch_config



@triton.jit
def _la_reduce_kernel(
    x_ptr, wr_ptr, br_ptr, out_ptr, C, H, W, Hp, Wp,
    sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w,
    BLOCK_P: tl.constexpr, CP: tl.constexpr, CR: tl.constexpr, C_RED: tl.constexpr, PREC: tl.constexpr,
    POOL_K: tl.constexpr, POOL_S: tl.constexpr,
):
    _, p_mask, oy, ox = program_pixels(BLOCK_P, Hp * Wp, Wp)
    n = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, CP)
    cr = tl.arange(0, CR)
    w = tl.load(wr_ptr + c[:, None] * CR + cr[None, :], mask=(c < C)[:, None], other=0.0)
    m = p_mask[:, None] & (c < C)[None, :]
    best = tl.full((BLOCK_P, CR), float("-inf"), tl.float32)
    for k in range(POOL_K * POOL_K):
        iy = oy * POOL_S + k // POOL_K
        ix = ox * POOL_S + k % POOL_K
        xv = tl.load(x_ptr + n * sx_n + c[None, :].to(tl.int64) * sx_c + iy[:, None].to(tl.int64) * sx_h
                     + ix[:, None].to(tl.int64) * sx_w, mask=m, other=0.0)
        r = mma(xv.to(tl.float32), w, PREC)
        best = tl.maximum(best, r)
    y = best + tl.load(br_ptr + cr, mask=cr < C_RED, other=0.0).to(tl.float32)[None, :]
    dst = n * so_n + cr[None, :].to(tl.int64) * so_c + oy[:, None].to(tl.int64) * so_h \
        + ox[:, None].to(tl.int64) * so_w
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=p_mask[:, None] & (cr < C_RED)[None, :])


def la_reduce_launch(kernel_wrapper, x, wr, br, c_red, out):
    n, c, h, w = x.shape
    hp, wp = out.shape[-2:]
    cp = 16
    while cp < c:
        cp *= 2
    cfg = launch_config("la_reduce", launch_arch(x), wr.dtype, c_in=c, cp=cp, cr=wr.shape[-1])
    block_p = cfg.block_p
    kernel_wrapper[(triton.cdiv(hp * wp, block_p), n)](
        x, wr, br, out, c, h, w, hp, wp, *x.stride(), *out.stride(),
        BLOCK_P=block_p, CP=cp, CR=wr.shape[-1], C_RED=c_red, PREC=dot_precision(wr.dtype),
        POOL_K=POOL_KERNEL, POOL_S=POOL_STRIDE, **cfg.launch_kwargs())
    return out
