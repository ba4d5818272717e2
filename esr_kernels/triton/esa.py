"""ESA in three kernels, two of them over the full-resolution tensor:

1. ``_esa_down_kernel`` (reads x once): the 1x1 reduction recomputed at each tap of the
   strided 3x3 conv (stride 2, no padding) -> the half-resolution map d (float32).
2. ``_esa_low_kernel`` (low resolution only): max-pool 7/3 of d, evaluated per tap of the
   3x3 conv (padding 1) that follows -> the low-resolution map (float32).
3. ``_esa_out_kernel`` (reads x once, writes the output once): bilinear upsample of the low
   map + the folded 1x1 branch skip(reduce(x)) -> 1x1 expansion -> sigmoid -> x * gate, plus
   the block residual.
"""
import torch
import triton
import triton.language as tl

from ..op_args import EsaWeights
from ..reference import next_pow2_16
from ..spec import POOL_KERNEL, POOL_STRIDE, pooled_size
from .common import (bilinear_coords, bilinear_sample, dot_precision, launch_arch, mma, program_pixels,
                     sigmoid)
from .configs import launch_config



@triton.jit
def _esa_down_kernel(
    x_ptr, wr_ptr, br_ptr, wd_ptr, bd_ptr, d_ptr, C, H, W, H2, W2,
    sx_n, sx_c, sx_h, sx_w,
    BLOCK_P: tl.constexpr, CI_BLOCK: tl.constexpr, CR: tl.constexpr, PREC: tl.constexpr,
):
    p, p_mask, oy, ox = program_pixels(BLOCK_P, H2 * W2, W2)
    n = tl.program_id(1).to(tl.int64)
    cr = tl.arange(0, CR)
    br = tl.load(br_ptr + cr).to(tl.float32)
    acc = tl.zeros((BLOCK_P, CR), dtype=tl.float32)
    # A runtime loop, not static_range: unrolled, the nine taps' float32 (IEEE) dots were
    # scheduled together and spilled (255 registers + 1.2 KB of stack per thread on sm_86).
    for tap in range(9):
        iy = oy * 2 + tap // 3
        ix = ox * 2 + tap % 3
        pix = n * sx_n + iy.to(tl.int64) * sx_h + ix.to(tl.int64) * sx_w
        r = tl.zeros((BLOCK_P, CR), dtype=tl.float32)
        for ci0 in range(0, C, CI_BLOCK):
            ci = ci0 + tl.arange(0, CI_BLOCK)
            m = p_mask[:, None] & (ci < C)[None, :]
            xv = tl.load(x_ptr + pix[:, None] + ci[None, :].to(tl.int64) * sx_c, mask=m, other=0.0)
            w = tl.load(wr_ptr + ci[:, None] * CR + cr[None, :], mask=(ci < C)[:, None], other=0.0)
            r += mma(xv.to(tl.float32), w, PREC)
        r = r + br[None, :]
        wd = tl.load(wd_ptr + (tap * CR + cr[:, None]) * CR + cr[None, :])
        acc += mma(r, wd, PREC)
    bd = tl.load(bd_ptr + cr).to(tl.float32)
    d = acc + bd[None, :]
    dst = n * CR * H2 * W2 + cr[None, :].to(tl.int64) * (H2 * W2) + p[:, None]
    tl.store(d_ptr + dst, d, mask=p_mask[:, None])


@triton.jit
def _esa_low_kernel(
    d_ptr, wl_ptr, bl_ptr, low_ptr, H2, W2, Hp, Wp,
    BLOCK_P: tl.constexpr, CR: tl.constexpr, PREC: tl.constexpr,
    POOL_K: tl.constexpr, POOL_S: tl.constexpr,
):
    p, p_mask, oy, ox = program_pixels(BLOCK_P, Hp * Wp, Wp)
    n = tl.program_id(1).to(tl.int64)
    cr = tl.arange(0, CR)
    d_base = d_ptr + n * CR * H2 * W2 + cr[None, :].to(tl.int64) * (H2 * W2)
    acc = tl.zeros((BLOCK_P, CR), dtype=tl.float32)
    for tap in range(9):  # a runtime loop: see _esa_down_kernel
        qy = oy + tap // 3 - 1
        qx = ox + tap % 3 - 1
        valid = p_mask & (qy >= 0) & (qy < Hp) & (qx >= 0) & (qx < Wp)
        pooled = tl.full((BLOCK_P, CR), float("-inf"), tl.float32)
        # Not unrolled: 49 window positions unrolled took 255 registers and spilled (float32).
        for k in tl.range(0, POOL_K * POOL_K, loop_unroll_factor=1):
            sy = qy * POOL_S + k // POOL_K
            sx = qx * POOL_S + k % POOL_K
            v = tl.load(d_base + (sy * W2 + sx)[:, None], mask=valid[:, None], other=float("-inf"))
            pooled = tl.maximum(pooled, v)
        pooled = tl.where(valid[:, None], pooled, 0.0)
        wl = tl.load(wl_ptr + (tap * CR + cr[:, None]) * CR + cr[None, :])
        acc += mma(pooled, wl, PREC)
    bl = tl.load(bl_ptr + cr).to(tl.float32)
    dst = n * CR * Hp * Wp + cr[None, :].to(tl.int64) * (Hp * Wp) + p[:, None]
    tl.store(low_ptr + dst, acc + bl[None, :], mask=p_mask[:, None])


@triton.jit
def _esa_out_kernel(
    x_ptr, low_ptr, wsr_ptr, bsr_ptr, we_ptr, be_ptr, res_ptr, out_ptr,
    C, H, W, Hp, Wp, scale_h, scale_w,
    sx_n, sx_c, sx_h, sx_w, sr_n, sr_c, sr_h, sr_w, so_n, so_c, so_h, so_w,
    HAS_RES: tl.constexpr, BLOCK_P: tl.constexpr, CP: tl.constexpr, CR: tl.constexpr,
    PREC: tl.constexpr,
):
    p, p_mask, oy, ox = program_pixels(BLOCK_P, H * W, W)
    n = tl.program_id(1).to(tl.int64)
    c = tl.arange(0, CP)
    cr = tl.arange(0, CR)
    m = p_mask[:, None] & (c < C)[None, :]
    x = tl.load(x_ptr + n * sx_n + c[None, :].to(tl.int64) * sx_c + oy[:, None].to(tl.int64) * sx_h
                + ox[:, None].to(tl.int64) * sx_w, mask=m, other=0.0).to(tl.float32)
    wsr = tl.load(wsr_ptr + c[:, None] * CR + cr[None, :], mask=(c < C)[:, None], other=0.0)
    t = mma(x, wsr, PREC) + tl.load(bsr_ptr + cr).to(tl.float32)[None, :]
    y0, y1, ly = bilinear_coords(oy, scale_h, Hp)
    xa, xb, lx = bilinear_coords(ox, scale_w, Wp)
    up = bilinear_sample(low_ptr + n * CR * Hp * Wp, cr[None, :].to(tl.int64) * (Hp * Wp),
                         y0[:, None], y1[:, None], ly[:, None], xa[:, None], xb[:, None], lx[:, None],
                         Wp, 1, p_mask[:, None])
    we = tl.load(we_ptr + cr[:, None] * CP + c[None, :])
    s = mma(up + t, we, PREC) + tl.load(be_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :]
    y = x * sigmoid(s)
    if HAS_RES:
        r = tl.load(res_ptr + n * sr_n + c[None, :].to(tl.int64) * sr_c + oy[:, None].to(tl.int64) * sr_h
                    + ox[:, None].to(tl.int64) * sr_w, mask=m, other=0.0)
        y = y + r.to(tl.float32)
    dst = n * so_n + c[None, :].to(tl.int64) * so_c + oy[:, None].to(tl.int64) * so_h \
        + ox[:, None].to(tl.int64) * so_w
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=m)


def esa_shapes(h: int, w: int):
    h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
    return (h2, w2), (pooled_size(h2), pooled_size(w2))


def esa_launch(wrap, x, weights: EsaWeights, residual, out, d, low):
    """``wrap``: maps a kernel to its launcher (wrap_triton, or identity). ``weights``: packed by
    ``packing.pack_esa``. ``d`` and ``low`` are float32 scratch tensors of shapes (N, 16, H2, W2)
    and (N, 16, Hp, Wp)."""
    wt = weights
    n, c, h, w = x.shape
    (h2, w2), (hp, wp) = d.shape[-2:], low.shape[-2:]
    cr = wt.reduce_w.shape[-1]
    prec = dot_precision(wt.reduce_w.dtype)
    arch = launch_arch(x)
    ci_block = min(next_pow2_16(c), 64)
    cfg = launch_config("esa_down", arch, wt.reduce_w.dtype, c_in=c, ci_block=ci_block, cr=cr)
    ci_block = cfg.ci_block or ci_block
    wrap(_esa_down_kernel)[(triton.cdiv(h2 * w2, cfg.block_p), n)](
        x, wt.reduce_w, wt.reduce_b, wt.down_w, wt.down_b, d, c, h, w, h2, w2, *x.stride(),
        BLOCK_P=cfg.block_p, CI_BLOCK=ci_block, CR=cr, PREC=prec, **cfg.launch_kwargs())
    cfg = launch_config("esa_low", arch, wt.reduce_w.dtype, cr=cr)
    wrap(_esa_low_kernel)[(triton.cdiv(hp * wp, cfg.block_p), n)](
        d, wt.low_w, wt.low_b, low, h2, w2, hp, wp, BLOCK_P=cfg.block_p, CR=cr, PREC=prec,
        POOL_K=POOL_KERNEL, POOL_S=POOL_STRIDE, **cfg.launch_kwargs())
    res = residual if residual is not None else x
    cp = wt.expand_w.shape[-1]
    cfg = launch_config("esa_out", arch, wt.reduce_w.dtype, c_in=c, cp=cp, cr=cr)
    wrap(_esa_out_kernel)[(triton.cdiv(h * w, cfg.block_p), n)](
        x, low, wt.skip_w, wt.skip_b, wt.expand_w, wt.expand_b, res, out, c, h, w, hp, wp,
        float(hp) / h, float(wp) / w,
        *x.stride(), *res.stride(), *out.stride(),
        HAS_RES=residual is not None, BLOCK_P=cfg.block_p, CP=cp, CR=cr, PREC=prec,
        **cfg.launch_kwargs())
    return out
