"""Dense KxK convolution (K = 1 or 3, C_out <= 64) with fused prologue and epilogue.

Prologue, applied to every input value as it is loaded (zero padding applies after it):
  - ``shift``: x - shift[c] (IFADNet's mean subtraction),
  - ``att``: the LocalAttention gate x * up(att) * sigmoid(x[:, 0]), up = bilinear
    (align_corners=False) from att's (h, w) to (H, W): the gated tensor never hits memory.
Epilogue: bias, activation, partial-channel passthrough (channels >= c_conv copy the
prologued input: PFDNLite's partial convs), residual (a tensor, or the gated input recomputed
from x and att; or SPAN's attention (y + residual) * (sigmoid(y) - 0.5)), shortcut + pixel
shuffle (the tail writes the final image).

One program computes all output channels of BLOCK_P output pixels of one image, as a sum over
taps and input-channel blocks of (BLOCK_P x CI) @ (CI x CO) products, accumulated in float32.
"""
import torch
import triton
import triton.language as tl

from ..op_args import ConvEpilogue, ConvGeometry
from ..reference import next_pow2_16
from ..spec import RES_GATED_INPUT
from .common import (DOT_IEEE, DOT_TF32, add_residual, apply_act, dot_precision, dots_arch, gate_at, gated,
                     launch_arch, load_tile, mma, program_pixels, shuffle_store)
from .configs import conv_version, launch_config
from .conv_tc import _conv_tc_kernel, conv_tc_launch

_RES_GATED: tl.constexpr = tl.constexpr(RES_GATED_INPUT)


@triton.jit
def _conv_kernel(
    x_ptr, w_ptr, b_ptr, out_ptr, res_ptr, att_ptr, shift_ptr, sc_ptr,
    C_in, H, W, C_conv, C_out, H_out, W_out, att_h, att_w, scale_h, scale_w,
    sx_n, sx_c, sx_h, sx_w, so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w,
    sa_n, sa_c, sa_h, sa_w, ss_n, ss_c, ss_h, ss_w,
    KSIZE: tl.constexpr, STRIDE: tl.constexpr, PAD: tl.constexpr, ACT: tl.constexpr,
    HAS_SHIFT: tl.constexpr, HAS_GATE: tl.constexpr, RES_MODE: tl.constexpr,
    SHUFFLE: tl.constexpr, SC_MODE: tl.constexpr, PARTIAL: tl.constexpr,
    BLOCK_P: tl.constexpr, CI_BLOCK: tl.constexpr, CO_PAD: tl.constexpr, PREC: tl.constexpr,
):
    p, p_mask, oy, ox = program_pixels(BLOCK_P, H_out * W_out, W_out)
    n = tl.program_id(1).to(tl.int64)
    co = tl.arange(0, CO_PAD)
    x_base = n * sx_n
    att_base = n * sa_n

    acc = tl.zeros((BLOCK_P, CO_PAD), dtype=tl.float32)
    for tap in tl.static_range(KSIZE * KSIZE):
        iy = oy * STRIDE - PAD + tap // KSIZE
        ix = ox * STRIDE - PAD + tap % KSIZE
        valid = p_mask & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        pix = iy.to(tl.int64) * sx_h + ix.to(tl.int64) * sx_w
        if HAS_GATE:
            x0 = tl.load(x_ptr + x_base + pix, mask=valid, other=0.0).to(tl.float32)
            gy0, gy1, gly, gx0, gx1, glx, gs = gate_at(x0, iy, ix, att_h, att_w, scale_h, scale_w)
        for ci0 in range(0, C_in, CI_BLOCK):
            ci = ci0 + tl.arange(0, CI_BLOCK)
            m = valid[:, None] & (ci < C_in)[None, :]
            xv = tl.load(x_ptr + x_base + pix[:, None] + ci[None, :].to(tl.int64) * sx_c,
                         mask=m, other=0.0).to(tl.float32)
            if HAS_SHIFT:
                sh = tl.load(shift_ptr + ci, mask=ci < C_in, other=0.0).to(tl.float32)
                xv = tl.where(m, xv - sh[None, :], 0.0)
            if HAS_GATE:
                xv = gated(xv, att_ptr, att_base, ci, gy0, gy1, gly, gx0, gx1, glx, gs,
                            sa_c, sa_h, sa_w, m)
            w = tl.load(w_ptr + (tap * C_in + ci[:, None]) * CO_PAD + co[None, :],
                        mask=(ci < C_in)[:, None], other=0.0)
            acc += mma(xv, w, PREC)

    bias = tl.load(b_ptr + co, mask=co < C_conv, other=0.0).to(tl.float32)
    y = apply_act(acc + bias[None, :], ACT)

    out_mask = p_mask[:, None] & (co < C_out)[None, :]
    if PARTIAL:
        # Same-size partial convs: channels >= C_conv pass the (prologued) input through.
        centre = oy.to(tl.int64) * sx_h + ox.to(tl.int64) * sx_w
        xc = load_tile(x_ptr, n, oy, ox, co, sx_n, sx_c, sx_h, sx_w, out_mask)
        if HAS_SHIFT:
            sh = tl.load(shift_ptr + co, mask=co < C_out, other=0.0).to(tl.float32)
            xc = xc - sh[None, :]
        if HAS_GATE:
            x0c = tl.load(x_ptr + x_base + centre, mask=p_mask, other=0.0).to(tl.float32)
            gy0, gy1, gly, gx0, gx1, glx, gs = gate_at(x0c, oy, ox, att_h, att_w, scale_h, scale_w)
            xc = gated(xc, att_ptr, att_base, co, gy0, gy1, gly, gx0, gx1, glx, gs,
                        sa_c, sa_h, sa_w, out_mask)
        y = tl.where((co >= C_conv)[None, :], xc, y)
    if RES_MODE != 0:
        r = load_tile(res_ptr, n, oy, ox, co, sr_n, sr_c, sr_h, sr_w, out_mask)
        if RES_MODE == _RES_GATED:
            # The residual is the LocalAttention output, recomputed from its input and att.
            r_pix = n * sr_n + oy.to(tl.int64) * sr_h + ox.to(tl.int64) * sr_w
            r0 = tl.load(res_ptr + r_pix, mask=p_mask, other=0.0).to(tl.float32)
            gy0, gy1, gly, gx0, gx1, glx, gs = gate_at(r0, oy, ox, att_h, att_w, scale_h, scale_w)
            r = gated(r, att_ptr, att_base, co, gy0, gy1, gly, gx0, gx1, glx, gs,
                       sa_c, sa_h, sa_w, out_mask)
        y = add_residual(y, r, RES_MODE)
    shuffle_store(y, co, n, oy, ox, out_mask, out_ptr, sc_ptr, C_out, so_n, so_c, so_h, so_w,
                  ss_n, ss_c, ss_h, ss_w, SHUFFLE, SC_MODE)


def conv_out_shape(x_shape, g: ConvGeometry, shuffle: int):
    n, _, h, w = x_shape
    ho = (h + 2 * g.padding - g.ksize) // g.stride + 1
    wo = (w + 2 * g.padding - g.ksize) // g.stride + 1
    if shuffle:
        return (n, g.c_out // (shuffle * shuffle), ho * shuffle, wo * shuffle)
    return (n, g.c_out, ho, wo)


def _strides(t, ndim=4):
    return tuple(t.stride()) if t is not None else (0,) * ndim


def conv_launch(wrap, x, w_packed, bias, g: ConvGeometry, e: ConvEpilogue, out):
    """Launch the dense conv, v1 (``_conv_kernel``) or v2 (``conv_tc._conv_tc_kernel``, see
    ``configs.conv_version``), through ``wrap`` (maps a kernel to its launcher: wrap_triton,
    gpu_check's recorder, or identity): esr::conv's arguments as ``op_args.CONV.split`` groups them."""
    n, _, h, w = x.shape
    c_in = w_packed.shape[1]  # may be fewer than x's channels: the conv reads channels [0, c_in)
    if c_in > x.shape[1]:
        raise ValueError(f"packed weight expects {c_in} input channels, x has {x.shape[1]}")
    if w_packed.shape[-1] < g.c_out:
        raise ValueError(f"packed weight covers {w_packed.shape[-1]} output channels, op has {g.c_out}")
    _, _, ho, wo = conv_out_shape(x.shape, g, 0)
    arch, prec = launch_arch(x), dot_precision(w_packed.dtype)
    gated = bool(e.gate_input or e.residual_mode == RES_GATED_INPUT)
    if conv_version(gated, dots_arch(x), prec == DOT_IEEE, prec == DOT_TF32) == "v2":
        cfg = launch_config("conv_tc", arch, w_packed.dtype, c_in=c_in, co_pad=w_packed.shape[-1], ksize=g.ksize)
        return conv_tc_launch(wrap(_conv_tc_kernel), x, w_packed, bias, g, e, out, cfg, c_in, prec)
    ci_block = min(next_pow2_16(c_in), 64)
    cfg = launch_config("conv", arch, w_packed.dtype, c_in=c_in, ci_block=ci_block,
                        co_pad=w_packed.shape[-1], ksize=g.ksize, gate=bool(e.gate_input or e.att is not None),
                        shuffle=e.shuffle)
    block_p, ci_block = cfg.block_p, cfg.ci_block or ci_block
    att, shortcut = e.att, e.shortcut
    att_h, att_w = (att.shape[-2], att.shape[-1]) if att is not None else (1, 1)
    dummy = x
    grid = (triton.cdiv(ho * wo, block_p), n)
    wrap(_conv_kernel)[grid](
        x, w_packed, bias, out,
        e.residual if e.residual is not None else dummy, att if att is not None else dummy,
        e.shift if e.shift is not None else dummy, shortcut if shortcut is not None else dummy,
        c_in, h, w, g.c_conv, g.c_out, ho, wo, att_h, att_w, float(att_h) / h, float(att_w) / w,
        *x.stride(), *out.stride(), *_strides(e.residual), *_strides(att),
        *(_strides(shortcut) if shortcut is not None and shortcut.dim() == 4 else (0, 0, 0, 0)),
        KSIZE=g.ksize, STRIDE=g.stride, PAD=g.padding, ACT=e.act, HAS_SHIFT=e.shift is not None,
        HAS_GATE=e.gate_input, RES_MODE=e.residual_mode, SHUFFLE=e.shuffle, SC_MODE=e.shortcut_mode,
        PARTIAL=g.c_out > g.c_conv,
        BLOCK_P=block_p, CI_BLOCK=ci_block, CO_PAD=w_packed.shape[-1],
        PREC=prec, **cfg.launch_kwargs(),
    )
    return out
