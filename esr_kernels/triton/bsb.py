"""BSB: 1x1 pointwise (no bias) -> 3x3 depthwise with bias and reflect padding -> GELU (erf),
optionally + residual.

v1 (``_bsb_kernel``): one kernel, the pointwise output never goes to memory, at the price of
computing it 9 times. v2 (with the v2 conv, ``configs.conv_choice() == "v2"``; issue 28, item 3):
the pointwise conv once, on the tensor cores (``conv_launch``: v2's implicit GEMM), into a
channels-last intermediate in the model's dtype (as the reference rounds it), then
``_bsb_dw_kernel``: the depthwise 3x3, bias, GELU and residual over 8x16-pixel tiles.

Each program owns BLOCK_P output pixels x all channels; for each of the 9 taps it recomputes
the pointwise conv at the reflected neighbour ((BLOCK_P x C) @ (C x C)) and accumulates the
depthwise product. Reflect padding as PyTorch's: index -1 -> 1 and H -> H - 2 (the edge pixel
itself is not repeated), so H, W >= 2.
"""
import torch
import triton
import triton.language as tl

from ..op_args import ConvEpilogue, ConvGeometry
from ..reference import next_pow2_16
from ..spec import ACT_GELU
from .common import (apply_act, dot_precision, image_base, launch_arch, mma, pixel_offset, program_pixels, tile_pixels,
                     widened)
from .configs import conv_choice, launch_config
from .conv import conv_launch
from .conv_tc import padded_channels_last, pixel_alignment, wide_offsets


@triton.jit
def _reflect(i, n):
    i = tl.where(i < 0, -i, i)
    return tl.where(i >= n, 2 * n - 2 - i, i)


@triton.jit
def _bsb_kernel(
    x_ptr, pw_ptr, dw_ptr, b_ptr, res_ptr, out_ptr, C, H, W,
    sx_n, sx_c, sx_h, sx_w, sr_n, sr_c, sr_h, sr_w, so_n, so_c, so_h, so_w,
    HAS_RES: tl.constexpr, BLOCK_P: tl.constexpr, CI_BLOCK: tl.constexpr, CO_PAD: tl.constexpr,
    PREC: tl.constexpr, ACT: tl.constexpr,
):
    _, p_mask, oy, ox = program_pixels(BLOCK_P, H * W, W)
    n = tl.program_id(1).to(tl.int64)
    co = tl.arange(0, CO_PAD)
    acc = tl.zeros((BLOCK_P, CO_PAD), dtype=tl.float32)
    for tap in tl.static_range(9):
        iy = _reflect(oy + tap // 3 - 1, H)
        ix = _reflect(ox + tap % 3 - 1, W)
        pix = n * sx_n + iy.to(tl.int64) * sx_h + ix.to(tl.int64) * sx_w
        pw = tl.zeros((BLOCK_P, CO_PAD), dtype=tl.float32)
        for ci0 in range(0, C, CI_BLOCK):
            ci = ci0 + tl.arange(0, CI_BLOCK)
            m = p_mask[:, None] & (ci < C)[None, :]
            xv = tl.load(x_ptr + pix[:, None] + ci[None, :].to(tl.int64) * sx_c, mask=m, other=0.0)
            w = tl.load(pw_ptr + ci[:, None] * CO_PAD + co[None, :], mask=(ci < C)[:, None], other=0.0)
            pw += mma(xv.to(tl.float32), w, PREC)
        dw = tl.load(dw_ptr + tap * CO_PAD + co).to(tl.float32)
        acc += pw * dw[None, :]
    bias = tl.load(b_ptr + co, mask=co < C, other=0.0).to(tl.float32)
    y = apply_act(acc + bias[None, :], ACT)
    out_mask = p_mask[:, None] & (co < C)[None, :]
    if HAS_RES:
        r = tl.load(res_ptr + n * sr_n + co[None, :].to(tl.int64) * sr_c + oy[:, None].to(tl.int64) * sr_h
                    + ox[:, None].to(tl.int64) * sr_w, mask=out_mask, other=0.0)
        y = y + r.to(tl.float32)
    dst = n * so_n + co[None, :].to(tl.int64) * so_c + oy[:, None].to(tl.int64) * so_h \
        + ox[:, None].to(tl.int64) * so_w
    tl.store(out_ptr + dst, y.to(out_ptr.dtype.element_ty), mask=out_mask)


def pack_depthwise(dw_weight: torch.Tensor, co_pad: int) -> torch.Tensor:
    """(C, 1, 3, 3) -> (9, CO_pad) float32, zero-padded."""
    c = dw_weight.shape[0]
    packed = torch.zeros(9, co_pad, dtype=torch.float32, device=dw_weight.device)
    packed[:, :c] = dw_weight.reshape(c, 9).t().float()
    return packed.contiguous()


@triton.jit
def _dw_tap(t_img, pix, c, p_ok, st_c, dw_ptr, tap, T_CH: tl.constexpr, CP: tl.constexpr, T_ALIGN: tl.constexpr):
    """One tap's products for channels c [G] of pixels at offsets ``pix`` [P] of t: t's
    channels up to T_CH loaded whole (see ``_bsb_dw_kernel``)."""
    t_c = c if T_ALIGN > 1 else c * st_c  # T_ALIGN > 1: channels innermost (stride 1): vector loads
    v = tl.load(t_img + pix[:, None] + t_c[None, :], mask=p_ok[:, None] & (c < T_CH)[None, :], other=0.0)
    return v.to(tl.float32) * tl.load(dw_ptr + tap * CP + c)[None, :]


@triton.jit
def _dw_store(acc, c, oy, ox, p_ok, n, b_ptr, res_ptr, out_ptr, sr_n, sr_c, sr_h, sr_w, so_n, so_c, so_h, so_w,
              C: tl.constexpr, HAS_RES: tl.constexpr, ACT: tl.constexpr):
    """Bias, activation, residual and the store of channels c [G] (< C) of pixels (oy, ox)."""
    m = p_ok[:, None] & (c < C)[None, :]
    y = apply_act(acc + tl.load(b_ptr + c, mask=c < C, other=0.0).to(tl.float32)[None, :], ACT)
    if HAS_RES:
        y += tl.load(res_ptr + n * sr_n + (oy * sr_h + ox * sr_w)[:, None] + (c * sr_c)[None, :],
                     mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + n * so_n + (oy * so_h + ox * so_w)[:, None] + (c * so_c)[None, :],
             y.to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bsb_dw_kernel(
    t_ptr, dw_ptr, b_ptr, res_ptr, out_ptr, H, W, tiles_w,
    st_n, st_c, st_h, st_w, sr_n, sr_c, sr_h, sr_w, so_n, so_c, so_h, so_w,
    C: tl.constexpr, T_CH: tl.constexpr, HAS_RES: tl.constexpr, TILE_H: tl.constexpr, TILE_W: tl.constexpr,
    CP: tl.constexpr, CA: tl.constexpr, CB: tl.constexpr, ACT: tl.constexpr, WIDE: tl.constexpr,
    T_ALIGN: tl.constexpr,
):
    """v2's second half: out = act(depthwise3x3_reflect(t) + b) (+ res) over a TILE_H x TILE_W
    tile, all channels as CA (a power of two) + CB (0 or a power of two) columns, T_CH or more
    (36 channels: 32 + 8, not 64); t, res, out (N, C, H, W) any strides; dw (9, CP) float32.
    T_CH: the channels t's storage holds per pixel (v2's padded layout: C rounded up to 8), all
    loaded, so that a pixel's channels load as whole vectors: a channel's output depends on
    that channel alone, and those past C are never stored. Offsets within an image in 32 bits,
    its base in 64 (WIDE: an image's offsets may pass 2^31, all in 64). T_ALIGN: t's image, row
    and pixel strides are multiples of it, channels innermost (``conv_tc.pixel_alignment``)."""
    oy, ox, p_ok = tile_pixels(TILE_H, TILE_W, tiles_w, H, W)
    oy, ox = widened(oy, ox, WIDE)
    n = tl.program_id(1).to(tl.int64)
    ca = tl.arange(0, CA)
    cb = CA + tl.arange(0, CB if CB > 0 else 1)
    t_img = image_base(t_ptr, n, st_n, T_ALIGN)
    acc_a = tl.zeros((TILE_H * TILE_W, CA), dtype=tl.float32)
    acc_b = tl.zeros((TILE_H * TILE_W, CB if CB > 0 else 1), dtype=tl.float32)  # unused when CB == 0
    for tap in range(9):  # a runtime loop: unrolled, the nine taps' loads were all live at once (spills)
        iy = _reflect(oy + tap // 3 - 1, H)
        ix = _reflect(ox + tap % 3 - 1, W)
        pix = pixel_offset(iy, ix, st_h, st_w, T_ALIGN)
        acc_a += _dw_tap(t_img, pix, ca, p_ok, st_c, dw_ptr, tap, T_CH, CP, T_ALIGN)
        if CB > 0:
            acc_b += _dw_tap(t_img, pix, cb, p_ok, st_c, dw_ptr, tap, T_CH, CP, T_ALIGN)
    _dw_store(acc_a, ca, oy, ox, p_ok, n, b_ptr, res_ptr, out_ptr, sr_n, sr_c, sr_h, sr_w, so_n, so_c, so_h, so_w,
              C, HAS_RES, ACT)
    if CB > 0:
        _dw_store(acc_b, cb, oy, ox, p_ok, n, b_ptr, res_ptr, out_ptr, sr_n, sr_c, sr_h, sr_w, so_n, so_c, so_h,
                  so_w, C, HAS_RES, ACT)


def dw_column_groups(t_ch: int, cp: int) -> tuple[int, int]:
    """(CA, CB) for ``_bsb_dw_kernel``: ``t_ch`` channels (at most ``cp``, a power of two) as a
    power of two plus 0 or a smaller power of two (40 = 32 + 8, 48 = 32 + 16), else cp alone."""
    a = 1
    while a * 2 <= t_ch:
        a *= 2
    b = t_ch - a
    if b == 0 or (b & (b - 1)) == 0:
        return a, b
    return cp, 0


def _bsb_split_launch(wrap, x, pw_packed, dw_packed, dw_bias, residual, out):
    """v2: the pointwise conv once (``conv_launch``, no bias), then ``_bsb_dw_kernel``."""
    import torch

    n, c, h, w = x.shape
    co_pad = pw_packed.shape[-1]
    t = padded_channels_last((n, c, h, w), x)
    zero_bias = torch.zeros(co_pad, dtype=torch.float32, device=x.device)
    conv_launch(wrap, x, pw_packed, zero_bias, ConvGeometry(c_conv=c, c_out=c, ksize=1, stride=1, padding=0),
                ConvEpilogue(), t)
    cfg = launch_config("bsb_dw", launch_arch(x), pw_packed.dtype, c_in=c)
    tile_w = 16
    tile_h = max(cfg.block_p // tile_w, 1)
    tiles_w = triton.cdiv(w, tile_w)
    res = residual if residual is not None else x
    cp = dw_packed.shape[-1]
    t_ch = min(t.stride(3), cp)  # t is v2's padded channels-last: its pixels hold C rounded up to 8
    ca, cb = dw_column_groups(t_ch, cp)
    wrap(_bsb_dw_kernel)[(tiles_w * triton.cdiv(h, tile_h), n)](
        t, dw_packed, dw_bias, res, out, h, w, tiles_w, *t.stride(), *res.stride(), *out.stride(),
        C=c, T_CH=t_ch, HAS_RES=residual is not None, TILE_H=tile_h, TILE_W=tile_w, CP=cp, CA=ca, CB=cb,
        ACT=ACT_GELU, WIDE=wide_offsets(t, res, out), T_ALIGN=pixel_alignment(t),
        **cfg.launch_kwargs(),
    )
    return out


def bsb_launch(wrap, x, pw_packed, dw_packed, dw_bias, residual, out):
    """esr::bsb through ``wrap`` (maps a kernel to its launcher): v1's one kernel, or with the v2
    conv chosen the pointwise conv once and the depthwise kernel (module docstring)."""
    if conv_choice() == "v2":
        return _bsb_split_launch(wrap, x, pw_packed, dw_packed, dw_bias, residual, out)
    n, c, h, w = x.shape
    co_pad = pw_packed.shape[-1]
    cfg = launch_config("bsb", launch_arch(x), pw_packed.dtype, c_in=c, co_pad=co_pad)
    block_p, ci_block = cfg.block_p, cfg.ci_block or min(next_pow2_16(c), 64)
    res = residual if residual is not None else x
    wrap(_bsb_kernel)[(triton.cdiv(h * w, block_p), n)](
        x, pw_packed, dw_packed, dw_bias, res, out, c, h, w,
        *x.stride(), *res.stride(), *out.stride(),
        HAS_RES=residual is not None, BLOCK_P=block_p, CI_BLOCK=ci_block,
        CO_PAD=co_pad, PREC=dot_precision(pw_packed.dtype), ACT=ACT_GELU, **cfg.launch_kwargs(),
    )
    return out
