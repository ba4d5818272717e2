"""LocalAttention reduction: 1x1 conv (C -> 16) and max-pool 7/3 (no padding) fused; the
reduced full-resolution map never goes to memory.

v1 (``_la_reduce_kernel``): each program owns BLOCK_P pooled pixels and takes the max over its
49 window positions of the 1x1 conv evaluated there (the windows overlap: each input pixel's
1x1 is computed 49 / 9 = 5.4 times). v2 (``_la_reduce_tc_kernel``, where
``configs.aux_version`` says; issue 28, item 3): a program owns a TP_H x TP_W tile of pooled
pixels, computes the 1x1 once at each input pixel of its windows' union (IN_H x IN_W, rounded
up to powers of two: 16 x 16 for 4 x 4, 1.8 times the 9 input pixels a pooled one owns) into its
own block of a scratch tensor, and after a CTA barrier pools from there."""
import torch
import triton
import triton.language as tl

from ..spec import POOL_KERNEL, POOL_STRIDE
from .common import (dot_precision, image_base, launch_arch, mma, pixel_offset, program_pixels, project_cols,
                     weight_rows, widened)
from .configs import aux_version, launch_config
from .conv_tc import column_groups, pixel_alignment, wide_offsets



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


@triton.jit
def _la_reduce_tc_kernel(
    x_ptr, wr_ptr, br_ptr, out_ptr, scratch_ptr, H, W, Hp, Wp, tiles_w,
    sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w,
    C: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr, CR: tl.constexpr, C_RED: tl.constexpr,
    TP_H: tl.constexpr, TP_W: tl.constexpr, IN_H: tl.constexpr, IN_W: tl.constexpr, PREC: tl.constexpr,
    X_ALIGN: tl.constexpr, POOL_K: tl.constexpr, POOL_S: tl.constexpr, WIDE: tl.constexpr,
):
    """out = maxpool(x @ wr) + br for a TP_H x TP_W tile of pooled pixels: the 1x1 once at the
    IN_H x IN_W input pixels from the tile's first window on (IN >= (TP - 1) * POOL_S + POOL_K;
    those past the image read x as 0 and are in no valid window), stored to the program's
    scratch block (IN_H * IN_W * CR float32), then each pooled pixel's window read back. x
    (N, C, H, W) any strides (X_ALIGN: ``conv_tc.pixel_alignment``; WIDE: 64-bit offsets within
    an image, ``conv_tc.wide_offsets``), out (N, C_RED, Hp, Wp)."""
    tile = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    ty = (tile // tiles_w) * TP_H
    tx = (tile % tiles_w) * TP_W
    cr = tl.arange(0, CR)
    r = tl.arange(0, IN_H * IN_W)
    iy, ix = widened(ty * POOL_S + r // IN_W, tx * POOL_S + r % IN_W, WIDE)
    x_img = image_base(x_ptr, n, sx_n, X_ALIGN)
    wa, wb = weight_rows(wr_ptr, C, CA, CB, CR)
    _, _, red = project_cols(x_img, pixel_offset(iy, ix, sx_h, sx_w, X_ALIGN), (iy < H) & (ix < W), sx_c,
                             wa, wb, C, CA, CB, PREC, X_ALIGN)
    block = scratch_ptr + (n * tl.num_programs(0) + tile) * (IN_H * IN_W * CR)
    tl.store(block + r[:, None] * CR + cr[None, :], red)
    tl.debug_barrier()  # the windows read what other threads of this program stored
    q = tl.arange(0, TP_H * TP_W)
    qy = ty + q // TP_W
    qx = tx + q % TP_W
    best = tl.full((TP_H * TP_W, CR), float("-inf"), tl.float32)
    # The window's rows as a loop, its columns unrolled: ptxas unrolls the 7 rows whole (a loop
    # over all 49 positions it unrolled 4 times beside a remainder loop: trip counts the issue
    # model cannot read; roofline._loop_trips)
    for ky in range(POOL_K):
        row = ((q // TP_W) * POOL_S + ky) * IN_W + (q % TP_W) * POOL_S
        for kx in tl.static_range(POOL_K):
            best = tl.maximum(best, tl.load(block + (row + kx)[:, None] * CR + cr[None, :]))
    y = best + tl.load(br_ptr + cr, mask=cr < C_RED, other=0.0).to(tl.float32)[None, :]
    dst = n * so_n + cr[None, :].to(tl.int64) * so_c + qy[:, None].to(tl.int64) * so_h \
        + qx[:, None].to(tl.int64) * so_w
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=((qy < Hp) & (qx < Wp))[:, None]
             & (cr < C_RED)[None, :])


def _la_reduce_tc_launch(wrap, x, wr, br, c_red, out):
    """v2: ``_la_reduce_tc_kernel`` over 4 x 4 pooled tiles (16 x 16 for the interpreter: at
    most 2^20 elements a tensor there)."""
    n, c, h, w = x.shape
    hp, wp = out.shape[-2:]
    cfg = launch_config("la_reduce_tc", launch_arch(x), wr.dtype, c_in=c, cr=wr.shape[-1])
    tp_h = tp_w = 16 if cfg.block_p >= 4096 else 4  # the interpreter: 64 x 64 input pixels a program
    in_h, in_w = (triton.next_power_of_2((t - 1) * POOL_STRIDE + POOL_KERNEL) for t in (tp_h, tp_w))
    rows, cols = triton.cdiv(hp, tp_h), triton.cdiv(wp, tp_w)
    cr = wr.shape[-1]
    scratch = torch.empty((n, rows * cols, in_h * in_w, cr), dtype=torch.float32, device=x.device)
    ca, cb = column_groups(c)
    wrap(_la_reduce_tc_kernel)[(rows * cols, n)](
        x, wr, br, out, scratch, h, w, hp, wp, cols, *x.stride(), *out.stride(), C=c, CA=ca, CB=cb, CR=cr,
        C_RED=c_red, TP_H=tp_h, TP_W=tp_w, IN_H=in_h, IN_W=in_w, PREC=dot_precision(wr.dtype),
        X_ALIGN=pixel_alignment(x), POOL_K=POOL_KERNEL, POOL_S=POOL_STRIDE, WIDE=wide_offsets(x),
        **cfg.launch_kwargs())
    return out


def la_reduce_launch(wrap, x, wr, br, c_red, out):
    """esr::la_reduce through ``wrap`` (maps a kernel to its launcher): v1's kernel, or v2's
    where ``configs.aux_version`` says."""
    if aux_version(x, wr.dtype) == "v2":
        return _la_reduce_tc_launch(wrap, x, wr, br, c_red, out)
    kernel_wrapper = wrap(_la_reduce_kernel)
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
