"""1x1 conv over a concatenation that is never made: act(W @ cat(f_0 .. f_{k-1}) + b) [+ residual]
(IFADNet's fusion conv over its six block outputs, SPAN's over four features; issue 28 item 4).
The kernel reads each feature where it lies: input-channel block j of the GEMM's K loop comes
from feature j's pointer, so the k x C-channel concatenation (IFADNet 540x960, float32:
448 MB written and read again per forward) is neither stored nor launched for.

One program computes all output channels of BLOCK_P pixels of one image, as v1's dense conv
(``conv._conv_kernel``) does, feature by feature; the epilogue is the shared one (``common``). Semantics:
``esr_kernels.reference.concat_conv``.
"""
import torch
import triton
import triton.language as tl

from .common import add_residual, apply_act, dot_precision, launch_arch, load_tile, mma, program_pixels, shuffle_store
from .configs import launch_config

# Features one launch reads (IFADNet has six, SPAN four); more would need another pointer each.
MAX_FEATURES = 6


@triton.jit
def _concat_conv_kernel(
    f0_ptr, f1_ptr, f2_ptr, f3_ptr, f4_ptr, f5_ptr, w_ptr, b_ptr, res_ptr, out_ptr,
    C_f, C_out, H, W,
    sf_n, sf_c, sf_h, sf_w, so_n, so_c, so_h, so_w, sr_n, sr_c, sr_h, sr_w,
    N_FEAT: tl.constexpr, ACT: tl.constexpr, RES_MODE: tl.constexpr,
    BLOCK_P: tl.constexpr, CI_BLOCK: tl.constexpr, CO_PAD: tl.constexpr, PREC: tl.constexpr,
):
    _, p_mask, oy, ox = program_pixels(BLOCK_P, H * W, W)
    n = tl.program_id(1).to(tl.int64)
    co = tl.arange(0, CO_PAD)
    pix = n * sf_n + oy.to(tl.int64) * sf_h + ox.to(tl.int64) * sf_w  # the same in every feature

    acc = tl.zeros((BLOCK_P, CO_PAD), dtype=tl.float32)
    # The features unrolled, each its own K-block loop: C_f is rounded up to CI_BLOCK per
    # feature (IFADNet's 6 x 36 channels: 18 blocks where the concatenation took 14). Blocks
    # spanning two features instead (no rounding) issued more in the sm_90 SASS than the
    # rounding costs (a division and pointer selects per block, two masked loads): the
    # roofline's issue model put IFADNet float16 at 7.65 ms against 7.40 this way.
    for j in tl.static_range(N_FEAT):
        # Resolved at compile time: feature j's pointer (the launcher passes unused ones as f0).
        if j == 0:
            f_ptr = f0_ptr
        elif j == 1:
            f_ptr = f1_ptr
        elif j == 2:
            f_ptr = f2_ptr
        elif j == 3:
            f_ptr = f3_ptr
        elif j == 4:
            f_ptr = f4_ptr
        else:
            f_ptr = f5_ptr
        for ci0 in range(0, C_f, CI_BLOCK):
            ci = ci0 + tl.arange(0, CI_BLOCK)
            m = p_mask[:, None] & (ci < C_f)[None, :]
            xv = tl.load(f_ptr + pix[:, None] + ci[None, :].to(tl.int64) * sf_c, mask=m, other=0.0).to(tl.float32)
            w = tl.load(w_ptr + (j * C_f + ci[:, None]) * CO_PAD + co[None, :], mask=(ci < C_f)[:, None], other=0.0)
            acc += mma(xv, w, PREC)

    bias = tl.load(b_ptr + co, mask=co < C_out, other=0.0).to(tl.float32)
    y = apply_act(acc + bias[None, :], ACT)
    out_mask = p_mask[:, None] & (co < C_out)[None, :]
    if RES_MODE != 0:
        y = add_residual(y, load_tile(res_ptr, n, oy, ox, co, sr_n, sr_c, sr_h, sr_w, out_mask), RES_MODE)
    shuffle_store(y, co, n, oy, ox, out_mask, out_ptr, out_ptr, C_out, so_n, so_c, so_h, so_w,
                  0, 0, 0, 0, 0, 0)


def same_layout(features) -> list:
    """The features with one set of strides (the first's): a feature laid out otherwise is
    copied into the first's layout (the models' features share theirs, so this copies nothing
    there). The kernel addresses every feature with one set of strides."""
    first = features[0]
    out = [first]
    for f in features[1:]:
        if f.shape != first.shape or f.dtype != first.dtype or f.device != first.device:
            raise ValueError(f"concat_conv: features differ: {tuple(first.shape)} {first.dtype} vs "
                             f"{tuple(f.shape)} {f.dtype}")
        if f.stride() != first.stride():
            f = torch.empty_strided(first.shape, first.stride(), dtype=f.dtype, device=f.device).copy_(f)
        out.append(f)
    return out


def concat_conv_launch(wrap, features, w_packed, bias, act: int, res_mode: int, residual, out):
    """Launch ``_concat_conv_kernel`` through ``wrap`` (wrap_triton, gpu_check's recorder, or
    identity). features: k <= MAX_FEATURES tensors (N, C_f, H, W) with equal strides
    (``same_layout``); w_packed (1, k C_f, CO_pad) (reference.pack_conv_weight); bias (CO_pad,)
    float32; out (N, C_out, H, W), any layout."""
    k = len(features)
    if not 1 <= k <= MAX_FEATURES:
        raise ValueError(f"concat_conv reads 1 to {MAX_FEATURES} features, got {k}")
    f0 = features[0]
    n, c_f, h, w = f0.shape
    if w_packed.shape[1] != k * c_f:
        raise ValueError(f"packed weight expects {w_packed.shape[1]} input channels, the {k} features have {k * c_f}")
    c_out = out.shape[1]
    ci_block = 16
    cfg = launch_config("concat_conv", launch_arch(f0), w_packed.dtype, c_in=k * c_f, ci_block=ci_block,
                        co_pad=w_packed.shape[-1])
    ci_block = cfg.ci_block or ci_block
    ptrs = list(features) + [f0] * (MAX_FEATURES - k)
    res = residual if residual is not None else f0
    grid = (triton.cdiv(h * w, cfg.block_p), n)
    wrap(_concat_conv_kernel)[grid](
        *ptrs, w_packed, bias, res, out, c_f, c_out, h, w,
        *f0.stride(), *out.stride(), *(residual.stride() if residual is not None else (0, 0, 0, 0)),
        N_FEAT=k, ACT=act, RES_MODE=res_mode, BLOCK_P=cfg.block_p, CI_BLOCK=ci_block,
        CO_PAD=w_packed.shape[-1], PREC=dot_precision(w_packed.dtype), **cfg.launch_kwargs())
    return out
