"""Weight layouts the kernels take, made once at model load (never per call)."""
from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from .contract import EsaWeights
from .reference import next_pow2_16, pack_conv_weight


def pack_bias(bias: torch.Tensor | None, channels: int, device, dtype=torch.float32) -> torch.Tensor:
    out = torch.zeros(next_pow2_16(channels), dtype=dtype, device=device)
    if bias is not None:
        out[: bias.shape[0]] = bias.to(dtype)
    return out


def fold_esa_skip(reduce, skip) -> tuple[torch.Tensor, torch.Tensor]:
    """ESA's linear 1x1 branch skip(reduce(x)) as one 1x1 conv: float64 (C_r, C) weight and
    (C_r,) bias, for each backend to round once into its own layout."""
    wr, ws = reduce.weight.detach().double()[:, :, 0, 0], skip.weight.detach().double()[:, :, 0, 0]
    return ws @ wr, ws @ reduce.bias.detach().double() + skip.bias.detach().double()


def fold_esa(esa) -> EsaWeights:
    """An ESA module's (``esr_models.arch.layers.ESA``) weights, float64, skip branch folded: the one
    place ESA weights are folded (see ``EsaWeights``: field ``<conv>_w`` / ``<conv>_b`` is
    conv ``<conv>``'s weight / bias)."""
    def param(name: str) -> torch.Tensor:
        conv, kind = name.rsplit("_", 1)
        return getattr(getattr(esa, conv), {"w": "weight", "b": "bias"}[kind]).detach().double()

    weights = {name: param(name) for name in EsaWeights.arg_names()}
    weights["skip_w"], weights["skip_b"] = fold_esa_skip(esa.reduce, esa.skip)
    weights["expand_w"] = weights["expand_w"][:, :, 0, 0]
    return EsaWeights(**weights, dtype=esa.reduce.weight.dtype)


def fold_esa_input_conv(e: EsaWeights, weight: torch.Tensor, bias: torch.Tensor) -> EsaWeights:
    """ESA's weights as seen from the input of a 1x1 conv (weight (C, C, 1, 1), bias (C,)) before
    it: its full-resolution linear maps of x = W y + b (the reduction, and the skip branch folded
    in it) become maps of y, in float64. The output's product with x still needs x itself."""
    w, b = weight.detach().double().reshape(weight.shape[0], -1), bias.detach().double()
    rw = e.reduce_w[:, :, 0, 0]
    return dataclasses.replace(e, reduce_w=(rw @ w)[:, :, None, None], reduce_b=rw @ b + e.reduce_b,
                               skip_w=e.skip_w @ w, skip_b=e.skip_w @ b + e.skip_b)


def pack_esa(e: EsaWeights) -> EsaWeights:
    """Folded ESA weights -> the esr::esa (Triton) weight arguments: convs in the
    ``pack_conv_weight`` layout in the model's dtype (the 2-D skip and expand weights as 1x1
    convs: expand (C, C_r) -> (1, C_r, CP), the (pixels x C_r) @ (C_r x CP) expansion), biases
    float32 padded to the tile width."""
    def pack(_name: str, t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 1:
            return pack_bias(t.float(), t.shape[0], t.device)
        return pack_conv_weight(t if t.dim() == 4 else t[:, :, None, None]).to(e.dtype)

    return e.map_args(pack)


# Winograd F(2x2, 3x3) weight transform G (4x3); see csrc/cpu/winograd.cpp.
_WINOGRAD_G = ((1.0, 0.0, 0.0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0.0, 0.0, 1.0))


def round_up16(n: int) -> int:
    return (n + 15) // 16 * 16


def pack_winograd_3x3(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> float32 (16, C_in, C_outP): U[4i + j, ci, co] = (G g G^T)[i, j] of
    g = weight[co, ci], transformed in float64 and rounded once; C_outP = C_out rounded up to 16
    (zero columns)."""
    g = torch.tensor(_WINOGRAD_G, dtype=torch.float64, device=weight.device)
    co, ci = weight.shape[:2]
    u = torch.einsum("ik,oqkl,jl->ijqo", g, weight.detach().double(), g).reshape(16, ci, co)
    out = torch.zeros(16, ci, round_up16(co), dtype=torch.float64, device=weight.device)
    out[:, :, :co] = u
    return out.float().contiguous()


def pack_gemm_1x1(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 1, 1) -> float32 (C_in, C_outP), zero columns past C_out."""
    co, ci = weight.shape[:2]
    out = torch.zeros(ci, round_up16(co), dtype=torch.float32, device=weight.device)
    out[:, :co] = weight.detach().reshape(co, ci).t().float()
    return out.contiguous()


def pack_im2col_3x3(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> float32 (9 C_in, C_outP), row (ky * 3 + kx) * C_in + ci (the CPU
    engine's im2col order), zero columns past C_out."""
    co, ci = weight.shape[:2]
    out = torch.zeros(9 * ci, round_up16(co), dtype=torch.float32, device=weight.device)
    out[:, :co] = weight.detach().permute(2, 3, 1, 0).reshape(9 * ci, co).float()
    return out.contiguous()


def pack_direct_3x3_bf16(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3) -> bfloat16 (3, 9 ceil(C_in / 2), 2 C_outP) for the CPU engine's
    direct bf16 3x3 conv (csrc/cpu/direct_bf16.cpp), as ``vnni_pairs``: matrix q's rows are
    (kx, slot j, channel c padded to even), holding tap (ky = (j - q) mod 3, kx): the input rows
    sit in slots yp % 3 and an output row whose first input row is yp reads matrix yp % 3."""
    ci = weight.shape[1]
    taps = pack_im2col_3x3(weight).reshape(3, 3, ci, -1)  # (ky, kx, c, C_outP)
    cp = ci + ci % 2
    taps = F.pad(taps, (0, 0, 0, cp - ci))  # the odd channel's zero row: pairs never straddle taps
    mats = [taps[[(j - q) % 3 for j in range(3)]].transpose(0, 1).reshape(9 * cp, -1) for q in range(3)]
    return vnni_pairs(torch.stack(mats))


def vnni_pairs(w: torch.Tensor, chunks: tuple[int, ...] | None = None) -> torch.Tensor:
    """A GEMM weight (K, N) -> bfloat16 (K2, 2N) for the CPU engine's bf16 GEMM
    (csrc/cpu/gemm_bf16.h): row k2 holds the pair (w[2 k2, n], w[2 k2 + 1, n]) at columns 2n, 2n + 1.
    ``chunks`` (row counts summing to K: the inputs of a concatenating 1x1 conv) are paired each
    on its own, an odd chunk padded with a zero row; K2 = sum ceil(chunk / 2). Works on a leading
    batch dimension too (Winograd's 16 positions: (16, K, N) -> (16, K2, 2N))."""
    parts = []
    start = 0
    for k in chunks or (w.shape[-2],):
        part = w[..., start:start + k, :]
        if k % 2:
            part = torch.cat([part, torch.zeros_like(part[..., :1, :])], dim=-2)
        parts.append(part)
        start += k
    w = torch.cat(parts, dim=-2)
    *lead, k, n = w.shape
    pairs = w.reshape(*lead, k // 2, 2, n).transpose(-1, -2).reshape(*lead, k // 2, 2 * n)
    return pairs.float().to(torch.bfloat16).contiguous()


def pad_vector(v: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.float32, device=like.device)
    if v is not None:
        out[: v.shape[0]] = v.detach().float()
    return out


def pack_bsb_cpu(pointwise: torch.Tensor, depthwise: torch.Tensor, bias: torch.Tensor) -> dict:
    """BSB weights for the CPU engine's esr_native::bsb_packed: the pointwise (C, C, 1, 1) as
    (C, CP); the depthwise taps (C, 1, 3, 3) as (9, L) and the bias as (L,), repeated with
    period C over L = lcm(C, 16) (the kernel runs one flat vector loop over pixels x channels)."""
    c = pointwise.shape[0]
    period = c
    while period % 16:
        period += c
    taps = depthwise.detach().float().reshape(c, 9).t().repeat(1, period // c).contiguous()
    return {"pw": pack_gemm_1x1(pointwise), "taps": taps,
            "bias": bias.detach().float().repeat(period // c).contiguous()}
