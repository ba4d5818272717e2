"""The GPU launch configurations (esr_kernels/triton/configs.py) run through Triton's
interpreter against esr_kernels.reference.

By default the interpreter launches one 4,096-pixel program per image, so the small pixel
blocks of a real GPU — several programs per image, a partial last block — would never run
here. ``target_arch(arch)`` makes the launchers pick each arch's configuration instead; the
images below are sized so that every kernel gets several programs and a partial last one.
bfloat16 still takes the exact-dot workaround under the interpreter (see
``esr_kernels.triton.common.dot_precision``); float16 runs the tensor-core dot path itself.
"""
from __future__ import annotations

import pytest
import torch

from esr_kernels import reference as R
from esr_kernels.op_args import CONV, ESA
from test_kernels import REL_TOL, bsb_args, conv_args, esa_args, rel_err, upcast

pytestmark = pytest.mark.triton

ARCHS = (80, 86, 89, 90)
# (case, layout): a 3-channel head, a 216-channel 1x1 (several input-channel blocks), stride 2,
# both gates, the pixel-shuffle tail.
CONV_CASES = (("head_shift", "nchw"), ("1x1_wide_residual", "channels_last"), ("stride2_small", "nchw"),
              ("gated_partial", "channels_last"), ("gated_residual", "nchw"),
              ("tail_repeat_shuffle", "channels_last"))
H, W = 11, 13  # 143 output pixels: several programs and a partial last one for BLOCK_P <= 128


def _conv_sizes(args):
    w_packed, k = args[1], args[5]
    return dict(c_in=w_packed.shape[1], ci_block=min(R.next_pow2_16(w_packed.shape[1]), 64),
                co_pad=w_packed.shape[-1], ksize=k, gate=bool(args[12] or args[11] is not None))


def _configs_used(arch):
    """Every launch configuration the tests below use for ``arch``."""
    from esr_kernels.triton.configs import launch_config

    out = []
    for dtype in REL_TOL:
        for case, layout in CONV_CASES:
            out.append(launch_config("conv", arch, dtype, **_conv_sizes(conv_args(case, 1, H, W, dtype, layout, "cpu"))))
        out.append(launch_config("bsb", arch, dtype, c_in=36, co_pad=64))
        out.append(launch_config("esa_down", arch, dtype, c_in=36, ci_block=64, cr=16))
        out.append(launch_config("esa_low", arch, dtype, cr=16))
        out.append(launch_config("esa_out", arch, dtype, c_in=36, cp=64, cr=16))
        out.append(launch_config("la_reduce", arch, dtype, c_in=48, cp=64, cr=16))
    return tuple(out)


# Archs whose configurations are all the same as another's would run the same programs again:
# one arch per distinct set (the list says which).
DISTINCT_ARCHS = tuple({_configs_used(a): a for a in reversed(ARCHS)}.values())[::-1]


@pytest.fixture(autouse=True)
def _interpreter_only(device):
    if device.type != "cpu":
        pytest.skip("runs the GPU configurations through the interpreter (CPU); on a GPU "
                    "tests/kernels/test_kernels.py runs them natively")
    import esr_kernels.ops  # noqa: F401  registers torch.ops.esr


def _blocks(kernel, arch, dtype, pixels, **sizes):
    from esr_kernels.triton.configs import launch_config

    bp = launch_config(kernel, arch, dtype, **sizes).block_p
    return -(-pixels // bp), pixels % bp


def _check_tiling(kernel, arch, dtype, pixels, **sizes):
    """The case must exercise more than one program and a partial last block."""
    programs, tail = _blocks(kernel, arch, dtype, pixels, **sizes)
    assert programs >= 2 and tail != 0, (kernel, arch, programs, tail)


def test_every_arch_is_covered():
    assert set(DISTINCT_ARCHS) <= set(ARCHS)
    for arch in ARCHS:
        assert _configs_used(arch) in {_configs_used(a) for a in DISTINCT_ARCHS}


# v2 (conv_tc.py): one configuration for every arch, 8 x 16 tiles; 19 x 37 output pixels make
# partial tiles in both directions; the 216-channel 1x1 a partial last channel block (on sm_90
# the last 64 channels, overlapping the block before; masked per channel on sm_80); 36, 46 and
# 28 input channels one K step per tap on sm_90 as 32 + 16, 32 + 16 and 16 + 16 channels, the
# second part overlapping the first (``conv_tc.tap_parts``).
V2_CASES = (("head_shift", "nchw", 90), ("1x1_wide_residual", "channels_last", 90),
            ("1x1_wide_residual", "channels_last", 80), ("stride2_small", "strided", 90),
            ("partial_24in", "channels_last", 90), ("span_att", "channels_last", 90),
            ("3x3_gelu", "channels_last", 90), ("leaky_residual", "nchw", 90), ("tail_repeat_shuffle", "nchw", 90))


@pytest.mark.parametrize("dtype", list(REL_TOL), ids=str)
def test_conv_v2_gpu_tiles(dtype, device):
    from esr_kernels.triton.common import target_arch
    from esr_kernels.triton.configs import conv_kernel, launch_config

    cfg = launch_config("conv_tc", 90, dtype, c_in=216)
    assert cfg.block_p == 128 and 216 % cfg.ci_block != 0
    for case, layout, arch in V2_CASES:
        args = conv_args(case, 2, 19, 37, dtype, layout, device)
        with target_arch(arch), conv_kernel("v2"):
            out = torch.ops.esr.conv(*args)
        ref = R.conv(*CONV.split(upcast(*args)))
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert rel_err(out, ref) <= REL_TOL[dtype], (case, layout, arch)


def test_tap_parts_cover_every_channel_once():
    """``conv_tc.tap_parts``: a tap's channels as K_A (a power of two) plus the last K_B = 16
    channels, the overlap's weights zero in the second part: each channel counted exactly once;
    too few (< 16) or too many (> K_A + 16) channels fall back to channel blocks."""
    from esr_kernels.triton.conv_tc import tap_parts

    assert [tap_parts(c) for c in (3, 15, 16, 28, 36, 46, 48, 64, 80)] == [
        (0, 0), (0, 0), (16, 0), (16, 16), (32, 16), (32, 16), (32, 16), (64, 0), (64, 16)]
    assert tap_parts(56) == (0, 0)  # 32 + 24: not one 16-channel part
    for c_in in range(16, 129):
        k_a, k_b = tap_parts(c_in)
        if k_a == 0:
            continue
        counted = [0] * c_in
        for ci in range(k_a):
            counted[ci] += 1
        for ci in range(c_in - k_b, c_in) if k_b else ():
            counted[ci] += ci >= k_a  # the kernel's weight mask (W_MASK) in the second part
        assert counted == [1] * c_in, c_in


@pytest.mark.parametrize("dtype", list(REL_TOL), ids=str)
def test_bsb_v2_gpu_tiles(dtype, device):
    """v2's BSB (the 1x1 on v2's tiles, then the 8x16-pixel depthwise kernel, its 36 channels
    as 32 + 8 columns read from the 40 of each padded pixel) with the GPU's configuration:
    partial tiles both ways, the reflected borders."""
    from esr_kernels.triton.bsb import dw_column_groups
    from esr_kernels.triton.common import target_arch
    from esr_kernels.triton.configs import conv_kernel, launch_config

    assert launch_config("bsb_dw", 90, dtype, c_in=36).block_p == 128
    assert dw_column_groups(40, 64) == (32, 8) and dw_column_groups(48, 64) == (32, 16)
    assert dw_column_groups(64, 64) == (64, 0) and dw_column_groups(56, 64) == (64, 0)
    args, dw = bsb_args(2, 36, 19, 37, dtype, "channels_last", device)
    x, pw, _, bias, res = args
    with target_arch(90), conv_kernel("v2"):
        out = torch.ops.esr.bsb(*args)
    ref = R.bsb(x.float(), pw.float(), dw, bias[:36], res.float())
    assert out.shape == x.shape and rel_err(out, ref) <= REL_TOL[dtype]


def _padded(t):
    """t in v2's padded channels-last layout (``conv_tc.padded_channels_last``), as v2's convs
    hand it to ESA: 36 channels in 40 per pixel, the 4 past them garbage (NaN)."""
    from esr_kernels.triton.conv_tc import padded_channels_last

    out = padded_channels_last(t.shape, t)
    torch.empty(0, dtype=t.dtype, device=t.device).set_(out.untyped_storage()).fill_(float("nan"))
    return out.copy_(t)


@pytest.mark.parametrize("dtype", list(REL_TOL), ids=str)
@pytest.mark.parametrize("c,hw,padded", [(36, (53, 101), True), (46, (53, 117), False)], ids=["36-padded", "46"])
def test_esa_v2_gpu_tiles(c, hw, padded, dtype, device):
    """v2's ESA (esa_tc.py) with the GPU's configuration (one for every arch): partial 8 x 16
    tiles of d both ways, more than one 8 x 16 pooled tile (6 x 14 outputs each: 53 x 101 ->
    pooled 7 x 15, 2 x 2 tiles, the last ones partial), partial 128-pixel output blocks; x,
    residual and output in v2's padded layout (vector loads; the padding must not leak in) or
    channels-last with 46 channels (32 + 16 columns, the last 2 masked)."""
    from esr_kernels.triton.common import target_arch
    from esr_kernels.triton.configs import conv_kernel, launch_config
    from esr_kernels.triton.esa import esa_shapes
    from esr_kernels.triton.esa_tc import halo_tiles

    kernels = ("esa_down_tc", "esa_low_tc", "esa_out_tc")
    assert {launch_config(k, a, dtype, c_in=c, cp=64, cr=16).block_p for k in kernels for a in ARCHS} == {128}
    args, _ = esa_args(2, c, *hw, dtype, "channels_last", device)
    if padded:
        args = (_padded(args[0]), *args[1:-1], _padded(args[-1]))
    x, res = args[0], args[-1]
    (h2, w2), (hp, wp) = esa_shapes(*hw)
    assert h2 % 8 and w2 % 16 and min(halo_tiles(hp, wp, 8, 16)) >= 2
    with target_arch(90), conv_kernel("v2"):
        out = torch.ops.esr.esa(*args)
    ref = R.esa(*ESA.split(upcast(*args)))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) <= REL_TOL[dtype]
    assert out.stride(1) == 1  # channels innermost, as the input (v2's padded layout: ops._like)


@pytest.mark.parametrize("dtype", list(REL_TOL), ids=str)
def test_la_reduce_v2_gpu_tiles(dtype, device):
    """v2's LocalAttention reduction with the GPU's configuration (one for every arch): 4 x 4
    pooled tiles, the 1x1 at their 16 x 16 input pixels; 40 x 59 -> pooled 12 x 18: partial
    tiles of rows (of input, 16 past row 40) and of pooled columns; 48 channels as 32 + 16."""
    from esr_kernels.triton.common import target_arch
    from esr_kernels.triton.configs import conv_kernel, launch_config

    assert {launch_config("la_reduce_tc", a, dtype, c_in=48, cr=16).block_p for a in ARCHS} == {16}
    x = torch.randn(2, 48, 40, 59, device=device).to(dtype).contiguous(memory_format=torch.channels_last)
    w = R.pack_conv_weight(torch.randn(12, 48, 1, 1, device=device) / 7).to(dtype)
    b = torch.randn(12, device=device)
    with target_arch(90), conv_kernel("v2"):
        out = torch.ops.esr.la_reduce(x, w, b)
    ref = R.la_reduce(x.float(), w.float(), b)
    assert out.shape == ref.shape == (2, 12, 12, 18) and rel_err(out, ref) <= REL_TOL[dtype]


def test_v2_64_bit_offsets_give_the_same_answers(device, monkeypatch):
    """Images whose element offsets pass 2^31 take 64-bit offsets within an image (WIDE): too
    big to run here, so ``wide_offsets`` is made to say so for small ones, and v2's conv, BSB
    depthwise, ESA and LocalAttention reduction must give the same answers on that path."""
    import esr_kernels.triton.bsb as bsb
    import esr_kernels.triton.conv_tc as conv_tc
    import esr_kernels.triton.esa_tc as esa_tc
    import esr_kernels.triton.la_reduce as la_reduce
    from esr_kernels.triton.common import target_arch
    from esr_kernels.triton.configs import conv_kernel

    calls = []
    for module in (bsb, conv_tc, esa_tc, la_reduce):
        monkeypatch.setattr(module, "wide_offsets", lambda *t: calls.append(len(t)) or True)
    dtype = torch.float16
    with target_arch(90), conv_kernel("v2"):
        args, dw = bsb_args(1, 36, 19, 37, dtype, "channels_last", device)
        x, pw, _, bias, res = args
        assert rel_err(torch.ops.esr.bsb(*args), R.bsb(x.float(), pw.float(), dw, bias[:36], res.float())) \
            <= REL_TOL[dtype]
        args, _ = esa_args(1, 36, 53, 101, dtype, "channels_last", device)
        assert rel_err(torch.ops.esr.esa(*args), R.esa(*ESA.split(upcast(*args)))) <= REL_TOL[dtype]
        x = torch.randn(1, 48, 40, 59, device=device).to(dtype)
        w = R.pack_conv_weight(torch.randn(16, 48, 1, 1, device=device) / 7).to(dtype)
        b = torch.randn(16, device=device)
        assert rel_err(torch.ops.esr.la_reduce(x, w, b), R.la_reduce(x.float(), w.float(), b)) <= REL_TOL[dtype]
    assert len(calls) >= 4  # every launcher asked (BSB's 1x1 through conv_tc's)


@pytest.mark.parametrize("dtype", list(REL_TOL), ids=str)
@pytest.mark.parametrize("arch", DISTINCT_ARCHS)
def test_conv_gpu_configs(arch, dtype, device):
    from esr_kernels.triton.common import target_arch

    for case, layout in CONV_CASES:
        args = conv_args(case, 2, H, W, dtype, layout, device)
        k, stride = args[5], args[6]
        if stride == 1:
            _check_tiling("conv", arch, dtype, H * W, **_conv_sizes(args))
        with target_arch(arch):
            out = torch.ops.esr.conv(*args)
        ref = R.conv(*CONV.split(upcast(*args)))
        assert out.shape == ref.shape and torch.isfinite(out).all()
        assert rel_err(out, ref) <= REL_TOL[dtype], (case, layout)


@pytest.mark.parametrize("dtype", list(REL_TOL), ids=str)
@pytest.mark.parametrize("arch", DISTINCT_ARCHS)
def test_bsb_esa_la_reduce_gpu_configs(arch, dtype, device):
    from esr_kernels.triton.common import target_arch

    # bsb
    args, dw = bsb_args(2, 36, 9, 11, dtype, "channels_last", device)
    x, pw, _, bias, res = args
    assert pw.shape[-1] == 64
    _check_tiling("bsb", arch, dtype, 9 * 11, c_in=36, co_pad=64)
    with target_arch(arch):
        out = torch.ops.esr.bsb(*args)
    assert rel_err(out, R.bsb(x.float(), pw.float(), dw, bias[:36], res.float())) <= REL_TOL[dtype]

    # esa: 23 x 29 -> d 11 x 14, pooled 2 x 3
    args, _ = esa_args(2, 36, 23, 29, dtype, "nchw", device)
    assert args[9].shape[-1] == 64 and args[1].shape[-1] == 16
    _check_tiling("esa_out", arch, dtype, 23 * 29, c_in=36, cp=64, cr=16)
    with target_arch(arch):
        out = torch.ops.esr.esa(*args)
    assert rel_err(out, R.esa(*ESA.split(upcast(*args)))) <= REL_TOL[dtype]

    # la_reduce: 31 x 40 -> 9 x 12 pooled pixels
    x = torch.randn(2, 48, 31, 40, device=device).to(dtype)
    w = R.pack_conv_weight(torch.randn(16, 48, 1, 1, device=device) / 7).to(dtype)
    b = torch.randn(16, device=device)
    assert w.shape[-1] == 16
    _check_tiling("la_reduce", arch, dtype, 9 * 12, c_in=48, cp=64, cr=16)
    with target_arch(arch):
        out = torch.ops.esr.la_reduce(x, w, b)
    assert rel_err(out, R.la_reduce(x.float(), w.float(), b)) <= REL_TOL[dtype]


def test_interpreter_bf16_dot_is_still_wrong():
    """Why bfloat16 keeps the exact-dot path under the interpreter: its tl.dot multiplies the
    uint16 storage of bf16 values (triton 3.9.0). If this starts failing, the interpreter is
    fixed and ``dot_precision`` can drop the workaround."""
    import triton
    import triton.language as tl

    @triton.jit
    def _dot(a_ptr, b_ptr, c_ptr, M: tl.constexpr, K: tl.constexpr, N: tl.constexpr):
        a = tl.load(a_ptr + tl.arange(0, M)[:, None] * K + tl.arange(0, K)[None, :])
        b = tl.load(b_ptr + tl.arange(0, K)[:, None] * N + tl.arange(0, N)[None, :])
        tl.store(c_ptr + tl.arange(0, M)[:, None] * N + tl.arange(0, N)[None, :], tl.dot(a, b))

    g = torch.Generator().manual_seed(0)
    errors = {}
    for dtype in (torch.float16, torch.bfloat16):
        a = torch.randn(16, 16, generator=g).to(dtype)
        b = torch.randn(16, 16, generator=g).to(dtype)
        c = torch.empty(16, 16)
        _dot[(1,)](a, b, c, 16, 16, 16)
        errors[dtype] = rel_err(c, a.float() @ b.float())
    assert errors[torch.float16] <= 1e-6
    assert errors[torch.bfloat16] > 1.0, "the interpreter's bf16 dot is right now: drop the workaround"
