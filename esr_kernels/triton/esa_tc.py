"""v2's ESA (issue 28, items 3 and 4): ``esa.py``'s three kernels on 128-pixel tiles, the half-
and low-resolution maps channels-last (16 float32 channels a pixel: whole-vector loads), x's
channels as a power of two plus 0 or 16 columns (36 -> 32 + 16, not 64), and the max-pool
computed once per pooled pixel instead of at each of the 3x3 conv's 9 taps.

1. ``_esa_down_tc_kernel``: as v1's (the 1x1 reduction at each tap of the stride-2 3x3, no
   padding) over TILE_H x TILE_W half-resolution pixels -> d (N, H2, W2, 16) float32.
2. ``_esa_low_tc_kernel``: a HALO_H x HALO_W tile of pooled pixels (the program's
   (HALO_H - 2) x (HALO_W - 2) outputs and a ring of one around them) max-pooled once into the
   program's own block of a scratch tensor, then the 3x3 conv (padding 1) reads its taps back
   from there -> low (N, Hp, Wp, 16) float32. The block is written and read by the same program
   (a CTA barrier between), so no other program's work is waited for.
3. ``_esa_out_tc_kernel``: as v1's (bilinear up of low + the folded 1x1 branch -> expansion ->
   sigmoid gate of x, + residual) over BLOCK_P pixels; low's four taps as 16-channel vectors.

Semantics: ``reference.esa``. Which ESA runs: ``configs.aux_version``.
"""
import torch
import triton
import triton.language as tl

from ..op_args import EsaWeights
from ..spec import POOL_KERNEL, POOL_STRIDE
from .common import (bilinear_coords, bilinear_sample, dot_precision, image_base, launch_arch, mma, pixel_offset,
                     program_pixels, project_cols, sigmoid, tile_pixels, weight_rows, widened)
from .configs import launch_config
from .conv_tc import column_groups, pixel_alignment, wide_offsets
from .esa import esa_shapes


@triton.jit
def _esa_down_tc_kernel(
    x_ptr, wr_ptr, br_ptr, wd_ptr, bd_ptr, d_ptr, H2, W2, tiles_w,
    sx_n, sx_c, sx_h, sx_w, sd_n, sd_h, sd_w,
    C: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr, CR: tl.constexpr, TILE_H: tl.constexpr,
    TILE_W: tl.constexpr, PREC: tl.constexpr, X_ALIGN: tl.constexpr, WIDE: tl.constexpr,
):
    """d = down(reduce(x)) at TILE_H x TILE_W half-resolution pixels: per tap of the stride-2
    3x3, the 1x1 reduction of x's channels (CA + CB columns) then the tap's CR x CR; x (N, C,
    H, W) any strides, d channels-last (channel stride 1) float32."""
    oy, ox, ok = tile_pixels(TILE_H, TILE_W, tiles_w, H2, W2)
    oy, ox = widened(oy, ox, WIDE)
    n = tl.program_id(1).to(tl.int64)
    cr = tl.arange(0, CR)
    x_img = image_base(x_ptr, n, sx_n, X_ALIGN)
    wa, wb = weight_rows(wr_ptr, C, CA, CB, CR)
    br = tl.load(br_ptr + cr).to(tl.float32)[None, :]
    acc = tl.zeros((TILE_H * TILE_W, CR), dtype=tl.float32)
    for tap in range(9):  # a runtime loop, as v1's (unrolled, the taps' loads are all live at once)
        pix = pixel_offset(oy * 2 + tap // 3, ox * 2 + tap % 3, sx_h, sx_w, X_ALIGN)
        _, _, r = project_cols(x_img, pix, ok, sx_c, wa, wb, C, CA, CB, PREC, X_ALIGN)
        acc += mma(r + br, tl.load(wd_ptr + (tap * CR + cr[:, None]) * CR + cr[None, :]), PREC)
    d = acc + tl.load(bd_ptr + cr).to(tl.float32)[None, :]
    tl.store(d_ptr + n * sd_n + (oy * sd_h + ox * sd_w)[:, None] + cr[None, :], d, mask=ok[:, None])


@triton.jit
def _esa_low_tc_kernel(
    d_ptr, wl_ptr, bl_ptr, low_ptr, scratch_ptr, Hp, Wp, tiles_w,
    sd_n, sd_h, sd_w, sl_n, sl_h, sl_w,
    CR: tl.constexpr, HALO_H: tl.constexpr, HALO_W: tl.constexpr, PREC: tl.constexpr,
    POOL_K: tl.constexpr, POOL_S: tl.constexpr, WIDE: tl.constexpr,
):
    """low = conv3x3(maxpool(d), padding 1) for the (HALO_H - 2) x (HALO_W - 2) pooled pixels
    inside this program's HALO_H x HALO_W tile: every pixel of the tile is pooled once (those
    outside the map are the conv's zero padding) into the program's scratch block
    (HALO_H * HALO_W * CR float32), then each tap reads its shifted pixels back. d and low
    channels-last float32 (channel stride 1)."""
    tile = tl.program_id(0)
    n = tl.program_id(1).to(tl.int64)
    r = tl.arange(0, HALO_H * HALO_W)
    ry = r // HALO_W
    rx = r % HALO_W
    qy, qx = widened((tile // tiles_w) * (HALO_H - 2) + ry - 1, (tile % tiles_w) * (HALO_W - 2) + rx - 1, WIDE)
    cr = tl.arange(0, CR)
    in_map = (qy >= 0) & (qy < Hp) & (qx >= 0) & (qx < Wp)
    d_img = d_ptr + n * sd_n
    pooled = tl.full((HALO_H * HALO_W, CR), float("-inf"), tl.float32)
    # Not unrolled: 49 window positions unrolled spill (as in v1's).
    for k in tl.range(0, POOL_K * POOL_K, loop_unroll_factor=1):
        off = (qy * POOL_S + k // POOL_K) * sd_h + (qx * POOL_S + k % POOL_K) * sd_w
        v = tl.load(d_img + off[:, None] + cr[None, :], mask=in_map[:, None], other=float("-inf"))
        pooled = tl.maximum(pooled, v)
    block = scratch_ptr + (n * tl.num_programs(0) + tile) * (HALO_H * HALO_W * CR)
    tl.store(block + r[:, None] * CR + cr[None, :], tl.where(in_map[:, None], pooled, 0.0))
    tl.debug_barrier()  # the taps read pixels other threads of this program pooled and stored
    out_ok = (ry >= 1) & (ry < HALO_H - 1) & (rx >= 1) & (rx < HALO_W - 1) & (qy < Hp) & (qx < Wp)
    acc = tl.zeros((HALO_H * HALO_W, CR), dtype=tl.float32)
    # Unrolled (ptxas unrolled it anyway): a tap is one scratch load and one MMA, 16 columns wide.
    for tap in tl.static_range(9):
        src = r + (tap // 3 - 1) * HALO_W + (tap % 3 - 1)
        v = tl.load(block + src[:, None] * CR + cr[None, :], mask=out_ok[:, None], other=0.0)
        acc += mma(v, tl.load(wl_ptr + (tap * CR + cr[:, None]) * CR + cr[None, :]), PREC)
    low = acc + tl.load(bl_ptr + cr).to(tl.float32)[None, :]
    tl.store(low_ptr + n * sl_n + (qy * sl_h + qx * sl_w)[:, None] + cr[None, :], low, mask=out_ok[:, None])


@triton.jit
def _gate_store(xg, u, c, pix_r, pix_o, ok, we_ptr, be_ptr, res_img, out_img, sr_c, so_c,
                C: tl.constexpr, CP: tl.constexpr, CR: tl.constexpr, HAS_RES: tl.constexpr, PREC: tl.constexpr,
                R_ALIGN: tl.constexpr, O_ALIGN: tl.constexpr):
    """Channels ``c`` [G] of the output: xg * sigmoid(u @ expand[:, c] + b[c]) (+ residual), stored;
    xg [P, G] x's dtype, u [P, CR] float32 (up + skip); res_img / out_img the images' [1, 1]
    bases, pix_r / pix_o [P] the pixels' offsets there (``*_ALIGN`` > 1: channels innermost)."""
    cr = tl.arange(0, CR)
    m = ok[:, None] & (c < C)[None, :]
    s = mma(u, tl.load(we_ptr + cr[:, None] * CP + c[None, :]), PREC)
    y = xg.to(tl.float32) * sigmoid(s + tl.load(be_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :])
    if HAS_RES:
        rc = c if R_ALIGN > 1 else c * sr_c
        y += tl.load(res_img + pix_r[:, None] + rc[None, :], mask=m, other=0.0).to(tl.float32)
    oc = c if O_ALIGN > 1 else c * so_c
    tl.store(out_img + pix_o[:, None] + oc[None, :], y.to(out_img.dtype.element_ty), mask=m)


@triton.jit
def _esa_out_tc_kernel(
    x_ptr, low_ptr, wsr_ptr, bsr_ptr, we_ptr, be_ptr, res_ptr, out_ptr, H, W, Hp, Wp, scale_h, scale_w,
    sx_n, sx_c, sx_h, sx_w, sl_n, sl_h, sr_n, sr_c, sr_h, sr_w, so_n, so_c, so_h, so_w,
    C: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr, CP: tl.constexpr, CR: tl.constexpr,
    HAS_RES: tl.constexpr, BLOCK_P: tl.constexpr, PREC: tl.constexpr, X_ALIGN: tl.constexpr,
    R_ALIGN: tl.constexpr, O_ALIGN: tl.constexpr, WIDE: tl.constexpr,
):
    """out = x * sigmoid(expand(up(low) + skip(x))) (+ res) at BLOCK_P pixels: x, res, out
    (N, C, H, W) any strides; low channels-last float32 (channel stride 1, pixel stride CR);
    skip (C, CR) and expand (CR, CP) packed by ``packing.pack_esa``. ``*_ALIGN``: as
    ``conv_tc.pixel_alignment`` says of x, res and out."""
    p, ok, oy, ox = program_pixels(BLOCK_P, H * W, W)
    oy, ox = widened(oy, ox, WIDE)
    n = tl.program_id(1).to(tl.int64)
    cr = tl.arange(0, CR)
    x_img = image_base(x_ptr, n, sx_n, X_ALIGN)
    pix = pixel_offset(oy, ox, sx_h, sx_w, X_ALIGN)
    wa, wb = weight_rows(wsr_ptr, C, CA, CB, CR)
    xa, xb, t = project_cols(x_img, pix, ok, sx_c, wa, wb, C, CA, CB, PREC, X_ALIGN)
    t += tl.load(bsr_ptr + cr).to(tl.float32)[None, :]
    y0, y1, ly = bilinear_coords(oy, scale_h, Hp)
    xl, xr, lx = bilinear_coords(ox, scale_w, Wp)
    up = bilinear_sample(low_ptr + n * sl_n, cr[None, :], y0[:, None], y1[:, None], ly[:, None], xl[:, None],
                         xr[:, None], lx[:, None], sl_h, CR, ok[:, None])
    u = up + t
    res_img = image_base(res_ptr, n, sr_n, R_ALIGN)
    out_img = image_base(out_ptr, n, so_n, O_ALIGN)
    pix_r = pixel_offset(oy, ox, sr_h, sr_w, R_ALIGN)
    pix_o = pixel_offset(oy, ox, so_h, so_w, O_ALIGN)
    _gate_store(xa, u, tl.arange(0, CA), pix_r, pix_o, ok, we_ptr, be_ptr, res_img, out_img, sr_c, so_c, C, CP,
                CR, HAS_RES, PREC, R_ALIGN, O_ALIGN)
    if CB > 0:
        _gate_store(xb, u, CA + tl.arange(0, CB), pix_r, pix_o, ok, we_ptr, be_ptr, res_img, out_img, sr_c, so_c,
                    C, CP, CR, HAS_RES, PREC, R_ALIGN, O_ALIGN)


def _channels_last_f32(shape, like):
    """An empty float32 (N, C, H, W) tensor on ``like``'s device, channels innermost."""
    return torch.empty(shape, dtype=torch.float32, device=like.device, memory_format=torch.channels_last)


def _tile(block_p: int) -> tuple[int, int]:
    """(rows, cols) of a 2-D tile of ``block_p`` pixels: 16 columns on a GPU (8 x 16 at 128),
    64 for the interpreter's large programs (fewer, wider numpy steps)."""
    cols = 64 if block_p >= 4096 else min(16, block_p)
    return max(block_p // cols, 1), cols


def halo_tiles(hp: int, wp: int, halo_h: int, halo_w: int) -> tuple[int, int]:
    """(tile rows, tile columns) of ``_esa_low_tc_kernel``'s grid over an Hp x Wp pooled map:
    each tile computes (halo_h - 2) x (halo_w - 2) of it."""
    return triton.cdiv(hp, halo_h - 2), triton.cdiv(wp, halo_w - 2)


def esa_tc_launch(wrap, x, weights: EsaWeights, residual, out):
    """v2's esr::esa through ``wrap`` (maps a kernel to its launcher): ``esa.esa_launch``'s
    arguments; d, low and the pool's scratch are allocated here."""
    wt = weights
    n, c, h, w = x.shape
    (h2, w2), (hp, wp) = esa_shapes(h, w)
    cr, cp = wt.reduce_w.shape[-1], wt.expand_w.shape[-1]
    prec, arch = dot_precision(wt.reduce_w.dtype), launch_arch(x)
    ca, cb = column_groups(c)
    res = residual if residual is not None else x
    d, low = _channels_last_f32((n, cr, h2, w2), x), _channels_last_f32((n, cr, hp, wp), x)
    x_align, wide = pixel_alignment(x), wide_offsets(x, res, out, d)

    cfg = launch_config("esa_down_tc", arch, wt.reduce_w.dtype, c_in=c, cr=cr)
    th, tw = _tile(cfg.block_p)
    tiles_w = triton.cdiv(w2, tw)
    wrap(_esa_down_tc_kernel)[(tiles_w * triton.cdiv(h2, th), n)](
        x, wt.reduce_w, wt.reduce_b, wt.down_w, wt.down_b, d, h2, w2, tiles_w, *x.stride(),
        d.stride(0), d.stride(2), d.stride(3), C=c, CA=ca, CB=cb, CR=cr, TILE_H=th, TILE_W=tw, PREC=prec,
        X_ALIGN=x_align, WIDE=wide, **cfg.launch_kwargs())

    cfg = launch_config("esa_low_tc", arch, wt.reduce_w.dtype, cr=cr)
    hh, hw = _tile(cfg.block_p)
    rows, cols = halo_tiles(hp, wp, hh, hw)
    scratch = torch.empty((n, rows * cols, hh * hw, cr), dtype=torch.float32, device=x.device)
    wrap(_esa_low_tc_kernel)[(rows * cols, n)](
        d, wt.low_w, wt.low_b, low, scratch, hp, wp, cols, d.stride(0), d.stride(2), d.stride(3),
        low.stride(0), low.stride(2), low.stride(3), CR=cr, HALO_H=hh, HALO_W=hw, PREC=prec,
        POOL_K=POOL_KERNEL, POOL_S=POOL_STRIDE, WIDE=wide, **cfg.launch_kwargs())

    cfg = launch_config("esa_out_tc", arch, wt.reduce_w.dtype, c_in=c, cp=cp, cr=cr, has_res=residual is not None)
    wrap(_esa_out_tc_kernel)[(triton.cdiv(h * w, cfg.block_p), n)](
        x, low, wt.skip_w, wt.skip_b, wt.expand_w, wt.expand_b, res, out, h, w, hp, wp,
        float(hp) / h, float(wp) / w, *x.stride(), low.stride(0), low.stride(2), *res.stride(), *out.stride(),
        C=c, CA=ca, CB=cb, CP=cp, CR=cr, HAS_RES=residual is not None, BLOCK_P=cfg.block_p, PREC=prec,
        X_ALIGN=x_align, R_ALIGN=pixel_alignment(res), O_ALIGN=pixel_alignment(out), WIDE=wide,
        **cfg.launch_kwargs())
    return out
