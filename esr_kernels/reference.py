"""The semantics of every op, once: PyTorch references in the ops' own argument conventions
(their argument groups as the dataclasses of ``esr_kernels.op_args``).

Every backend implements these (``esr_kernels.contract``); tests of every backend, the
benchmarks and the self-test compare against them, and the reference models' layers
(``esr_models.arch.layers``) use the shared pieces (``pool``, ``upsample``, ``gate``,
``activation``), so that pooling geometry, interpolation and the gate are written once.
Weights are in the packed layouts the Triton ops take (see ``pack_conv_weight``); references
unpack them. All maths in float32, results in the input's dtype.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .op_args import ConvEpilogue, ConvGeometry, EsaWeights
from .spec import (ACT_GELU, ACT_LEAKY, ACT_NONE, ACT_SIGMOID, ACT_SILU, LEAKY_SLOPE, POOL_KERNEL,
                   POOL_STRIDE, RES_GATED_INPUT, RES_SPAN_ATT, RES_TENSOR, SHORTCUT_REPEAT_INPUT, SHORTCUT_VECTOR)


def next_pow2_16(n: int) -> int:
    """Smallest power of two >= max(n, 16): tl.dot's minimum tile edge."""
    p = 16
    while p < n:
        p *= 2
    return p


def pack_conv_weight(weight: torch.Tensor, op_channels: int | None = None) -> torch.Tensor:
    """(C_conv, C_in, K, K) -> (K*K, C_in, CO_pad) contiguous, zero-padded output channels,
    so that a kernel loads one (C_in block, CO_pad) tile per tap. ``op_channels``: the op's
    total output channels when larger than C_conv (partial convs)."""
    c_out, c_in, kh, kw = weight.shape
    packed = weight.new_zeros(kh * kw, c_in, next_pow2_16(max(c_out, op_channels or 0)))
    packed[:, :, :c_out] = weight.permute(2, 3, 1, 0).reshape(kh * kw, c_in, c_out)
    return packed.contiguous()


def unpack_conv_weight(packed: torch.Tensor, c_out: int) -> torch.Tensor:
    taps, c_in, _ = packed.shape
    k = int(round(taps ** 0.5))
    return packed[:, :, :c_out].reshape(k, k, c_in, c_out).permute(3, 2, 0, 1).contiguous()


def activation(x: torch.Tensor, act: int) -> torch.Tensor:
    if act == ACT_NONE:
        return x
    if act == ACT_GELU:
        return F.gelu(x)
    if act == ACT_SILU:
        return F.silu(x)
    if act == ACT_LEAKY:
        return F.leaky_relu(x, LEAKY_SLOPE)
    if act == ACT_SIGMOID:
        return torch.sigmoid(x)
    raise ValueError(f"unknown activation code {act}")


def pool(x: torch.Tensor) -> torch.Tensor:
    """The attention max-pool of ESA and LocalAttention: 7x7, stride 3, no padding, floor
    (H, W >= 7)."""
    return F.max_pool2d(x, POOL_KERNEL, POOL_STRIDE)


def upsample(t: torch.Tensor, size) -> torch.Tensor:
    """Bilinear, align_corners=False: src = (dst + 0.5) * in / out - 0.5, clamped at 0."""
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)


def gate(x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
    """LocalAttention output: x * upsample(att) * sigmoid(x[:, :1]), in this order."""
    return x * upsample(att, x.shape[-2:]) * torch.sigmoid(x[:, :1])


def span_attention(o3: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SPAN's parameter-free attention: (o3 + x) * (sigmoid(o3) - 0.5), in this order."""
    return (o3 + x) * (torch.sigmoid(o3) - 0.5)


def conv(x, w_packed, bias, geometry: ConvGeometry, epilogue: ConvEpilogue = ConvEpilogue()):
    """Reference of esr::conv, in its arguments grouped (``op_args.CONV.split`` of the op's).

    x (N, C_in, H, W). Prologue: ``x - shift`` (per channel, before zero padding) and, if
    ``gate_input``, ``gate(x, att)``. Conv (weights packed, ``c_conv`` output channels), bias, activation. If
    ``c_out > c_conv`` (partial mode: stride 1, same size, c_out = C_in), channels
    [c_conv, c_out) pass the (prologued) input through. The conv reads input channels
    [0, C_in of the packed weight). Then ``+ residual`` (``residual_mode`` RES_TENSOR), or
    ``+ gate(residual, att)`` (RES_GATED_INPUT), or ``(y + residual) * (sigmoid(y) - 0.5)`` (RES_SPAN_ATT: SPAN's
    parameter-free attention, the residual its block input), then ``+ shortcut`` (the input image repeated r^2
    times per channel, or a vector per image channel) and pixel shuffle by ``shuffle`` if non-zero.
    """
    g, e = geometry, epilogue
    dtype = x.dtype
    xin = x.float()
    if e.shift is not None:
        xin = xin - e.shift.float().view(1, -1, 1, 1)
    if e.gate_input:
        xin = gate(xin, e.att.float())
    w = unpack_conv_weight(w_packed.float(), g.c_conv)
    y = F.conv2d(xin[:, :w.shape[1]], w, bias[:g.c_conv].float(), stride=g.stride, padding=g.padding)
    y = activation(y, e.act)
    if g.c_out > g.c_conv:
        y = torch.cat([y, xin[:, g.c_conv:g.c_out]], dim=1)
    if e.residual_mode == RES_TENSOR:
        y = y + e.residual.float()
    elif e.residual_mode == RES_GATED_INPUT:
        y = y + gate(e.residual.float(), e.att.float())
    elif e.residual_mode == RES_SPAN_ATT:
        y = span_attention(y, e.residual.float())
    if e.shuffle:
        r2 = e.shuffle * e.shuffle
        if e.shortcut_mode == SHORTCUT_REPEAT_INPUT:
            y = y + torch.repeat_interleave(e.shortcut.float(), r2, dim=1)
        y = F.pixel_shuffle(y, e.shuffle)
        if e.shortcut_mode == SHORTCUT_VECTOR:
            y = y + e.shortcut.float().view(1, -1, 1, 1)
    return y.to(dtype)


def bsb(x, pw_packed, dw_weight, dw_bias, residual=None):
    """Reference of esr::bsb: GELU(depthwise3x3_reflect(pointwise1x1(x)) + bias) [+ residual].
    pw_packed (1, C, CO_pad); dw_weight (C, 1, 3, 3); dw_bias (C,)."""
    c = x.shape[1]
    xf = x.float()
    p = F.conv2d(xf, unpack_conv_weight(pw_packed.float(), c))
    p = F.pad(p, (1, 1, 1, 1), mode="reflect")
    y = F.gelu(F.conv2d(p, dw_weight.float(), dw_bias.float(), groups=c))
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def esa(x, weights: EsaWeights, residual=None):
    """Reference of esr::esa, its weights in the op's packed layout (``packing.pack_esa``):
    x * sigmoid(expand(up(low(maxpool(down(reduce(x))))) + skip(x))) [+ residual], where
    ``skip`` is the 1x1 branch already folded with the reduction."""
    w = weights
    c, cr = x.shape[1], w.reduce_b.shape[0]
    xf = x.float()
    r = F.conv2d(xf, unpack_conv_weight(w.reduce_w.float(), cr), w.reduce_b.float())
    d = F.conv2d(r, unpack_conv_weight(w.down_w.float(), cr), w.down_b.float(), stride=2)
    low = F.conv2d(pool(d), unpack_conv_weight(w.low_w.float(), cr), w.low_b.float(), padding=1)
    up = upsample(low, x.shape[-2:])
    skip = F.conv2d(xf, unpack_conv_weight(w.skip_w.float(), cr), w.skip_b.float())
    y = xf * torch.sigmoid(F.conv2d(up + skip, unpack_conv_weight(w.expand_w.float(), c), w.expand_b[:c].float()))
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)


def la_reduce(x, reduce_w, reduce_b):
    """Reference of esr::la_reduce: max_pool 7/3 (no padding) of a 1x1 conv; reduce_w packed
    (1, C, CR_pad), reduce_b (C_r,)."""
    w = unpack_conv_weight(reduce_w.float(), reduce_b.shape[0])
    return pool(F.conv2d(x.float(), w, reduce_b.float())).to(x.dtype)


def concat_conv(features, weight, bias, act: int = ACT_NONE, residual=None):
    """Reference of a backend's concat_conv: act(1x1 conv of cat(features)) [+ residual];
    weight (C_out, sum of the features' channels, 1, 1), bias (C_out,)."""
    x = torch.cat([f.float() for f in features], dim=1)
    y = activation(F.conv2d(x, weight.float(), bias.float()), act)
    if residual is not None:
        y = y + residual.float()
    return y.to(features[0].dtype)


# ------------------------------------------------------------------------- int8 (issue 29, item 3)
# The quantisation an int8 conv kernel implements (VNNI / AMX-INT8 take u8 x s8 products):
# weights symmetric per output channel in [-127, 127]; the input per tensor, asymmetric u8 with
# a zero point (the value 0.0 is exact, so zero padding is q = zero point); the products summed
# exactly in integers, then scaled in float32 and the bias added.
INT8_WEIGHT_MAX = 127
U8_MAX = 255


def quantize_weight_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(C_out, C_in, K, K) float -> (int8 of the same shape, float32 scale (C_out,)):
    w ~= q * scale[co], scale = max |w[co]| / 127 (1 for an all-zero channel), round half to even."""
    w = weight.detach().float()
    amax = w.abs().amax(dim=tuple(range(1, w.dim())))
    scale = torch.where(amax > 0, amax / INT8_WEIGHT_MAX, torch.ones_like(amax))
    q = torch.clamp(torch.round(w / scale.view(-1, *([1] * (w.dim() - 1)))), -INT8_WEIGHT_MAX, INT8_WEIGHT_MAX)
    return q.to(torch.int8), scale


def activation_qparams(lo: float, hi: float) -> tuple[float, int]:
    """(scale, zero point) of the u8 grid over [min(lo, 0), max(hi, 0)] (a calibrated input
    range): x ~= (q - zero_point) * scale with q in [0, 255]; 0.0 maps to the zero point exactly."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"activation range [{lo}, {hi}] is not finite")
    if hi == lo:
        return 1.0, 0
    scale = float(torch.tensor((hi - lo) / U8_MAX, dtype=torch.float32))
    zero_point = int(min(max(round(-lo / scale), 0), U8_MAX))
    return scale, zero_point


def quantize_u8(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """x -> uint8 clamp(round(x / scale) + zero_point, 0, 255) (float32 maths, round half to even)."""
    q = torch.round(x.float() / torch.tensor(scale, dtype=torch.float32)) + zero_point
    return torch.clamp(q, 0, U8_MAX).to(torch.uint8)


def int8_conv(x, w_q, w_scale, bias, x_scale: float, x_zero_point: int, stride: int = 1, padding: int = 0):
    """Reference of an int8 conv: x (N, C_in, H, W) float; w_q (C_out, C_in, K, K) int8 with
    float32 ``w_scale`` (C_out,) (``quantize_weight_int8``); ``x_scale`` / ``x_zero_point`` the
    input's calibrated u8 grid (``activation_qparams``). Returns float32
    ``acc * (x_scale * w_scale[co]) + bias[co]``, acc = sum of (q(x) - zero_point) * w_q over the
    window, exact (integers; zero padding contributes 0), the scale product taken in float32."""
    xq = quantize_u8(x, x_scale, x_zero_point).to(torch.float64) - x_zero_point
    acc = F.conv2d(xq, w_q.to(torch.float64), None, stride=stride, padding=padding)  # exact below 2^53
    combined = torch.tensor(x_scale, dtype=torch.float32) * w_scale.float()
    y = acc.float() * combined.view(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.float().view(1, -1, 1, 1)
    return y
