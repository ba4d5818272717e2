"""Weight layouts the kernels take, made once at model load (never per call)."""
from __future__ import annotations

import torch

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


def pack_esa(reduce, down, low, skip, expand, dtype) -> dict[str, torch.Tensor]:
    """nn.Conv2d modules of an ESA -> the esr::esa (Triton) weight arguments, with the 1x1
    branch folded (fold_esa_skip)."""
    wr = reduce.weight.detach()
    folded_w, folded_b = fold_esa_skip(reduce, skip)
    folded_w = folded_w[:, :, None, None]
    dev = wr.device
    return {
        "reduce_w": pack_conv_weight(wr).to(dtype), "reduce_b": pack_bias(reduce.bias.detach(), wr.shape[0], dev),
        "down_w": pack_conv_weight(down.weight.detach()).to(dtype),
        "down_b": pack_bias(down.bias.detach(), wr.shape[0], dev),
        "low_w": pack_conv_weight(low.weight.detach()).to(dtype),
        "low_b": pack_bias(low.bias.detach(), wr.shape[0], dev),
        "skip_w": pack_conv_weight(folded_w.float()).to(dtype),
        "skip_b": pack_bias(folded_b.float(), wr.shape[0], dev),
        # (C, C_r, 1, 1) -> (1, C_r, CP): the (pixels x C_r) @ (C_r x CP) expansion.
        "expand_w": pack_conv_weight(expand.weight.detach()).to(dtype),
        "expand_b": pack_bias(expand.bias.detach(), expand.weight.shape[0], dev),
    }



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
