"""The per-pixel functions of the CUDA kernels (csrc/common/pixel_ops.h, maths.h), executed on
CPU: the CPU versions of esr_native::bsb / esa_out / la_reduce loop the same functions over
pixels. Checked against esr_kernels/reference.py at minimum and odd sizes, batch 2, in
contiguous, channels_last and non-contiguous layouts, for every channel count the kernels are
instantiated for (csrc/common/channels.h)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from esr_kernels import reference as R
from esr_kernels.packing import fold_esa, fold_esa_skip, pack_esa
from esr_kernels.spec import POOL_KERNEL, POOL_STRIDE

pytestmark = pytest.mark.native_cpu  # skipped unless the extension is built (conftest)
FP32_TOL = 1e-5
LAYOUTS = ["contiguous", "channels_last", "strided"]


@pytest.fixture(scope="module")
def native():
    import esr_kernels._C_cpu  # noqa: F401
    import esr_kernels.native  # noqa: F401

    return torch.ops.esr_native


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    n, c, h, w = t.shape  # every other column of a larger tensor, one row down
    view = torch.full((n, c, h + 2, 2 * w + 1), float("nan"))[:, :, 1:h + 1, 1::2]
    view.copy_(t)
    assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
    return view


def check_output(out, ref):
    """CPU kernels return float32 channels_last."""
    assert out.dtype == torch.float32 and out.is_contiguous(memory_format=torch.channels_last)
    assert out.shape == ref.shape
    assert (out - ref).abs().max() <= FP32_TOL


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("hw", [(2, 2), (2, 5), (47, 59)], ids=["minimum", "thin", "odd"])
@pytest.mark.parametrize("with_residual", [False, True], ids=["plain", "residual"])
def test_bsb(native, hw, kind, with_residual):
    torch.manual_seed(hw[0] * 100 + hw[1])
    c = 36
    x, res = torch.randn(2, c, *hw), torch.randn(2, c, *hw) if with_residual else None
    pw, dw, db = torch.randn(c, c) / 6, torch.randn(c, 9) / 3, torch.randn(c)
    out = native.bsb(layout(x, kind), pw, dw, db, None if res is None else layout(res, kind))
    check_output(out, R.bsb(x, R.pack_conv_weight(pw[:, :, None, None]), dw.reshape(c, 1, 3, 3), db, res))


def esa_module(c: int, cr: int):
    from esr_models.arch.layers import ESA

    torch.manual_seed(c)
    return ESA(c, cr).eval()


def esa_inputs(esa, x):
    """esa_out's arguments as the CUDA backend packs them: the skip branch folded with the
    reduction at load in float64 (packing.fold_esa_skip), rounded once to float32; the
    low-resolution branch from the module's own convs."""
    skip_w, skip_b = fold_esa_skip(esa.reduce, esa.skip)
    low = esa.low(F.max_pool2d(esa.down(esa.reduce(x)), POOL_KERNEL, POOL_STRIDE))
    return (low, skip_w.float(), skip_b.float(), esa.expand.weight[:, :, 0, 0].contiguous(), esa.expand.bias)


def esa_reference(esa, x, residual):
    """reference.esa in its packed arguments (packing.pack_esa of the folded weights: the same
    folded skip weights, rounded once to float32)."""
    return R.esa(x, pack_esa(fold_esa(esa)), residual)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("hw", [(15, 15), (47, 59)], ids=["minimum", "odd"])
@pytest.mark.parametrize("channels", [(36, 16), (46, 16)], ids=["ifadnet", "rlfn"])
def test_esa_out(native, channels, hw, kind):
    esa = esa_module(*channels)
    x, res = torch.randn(2, channels[0], *hw), torch.randn(2, channels[0], *hw)
    with torch.no_grad():
        args = esa_inputs(esa, x)
        out = native.esa_out(layout(x, kind), *args, layout(res, kind))
        check_output(out, esa_reference(esa, x, res))
        # and the module itself (unfolded skip branch): the fold is exact up to float32 rounding
        assert (out - (esa(x) + res)).abs().max() <= FP32_TOL
        check_output(native.esa_out(layout(x, kind), *args, None), esa_reference(esa, x, None))


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("hw", [(7, 7), (8, 10), (47, 59)], ids=["minimum", "floor", "odd"])
def test_la_reduce(native, hw, kind):
    torch.manual_seed(hw[0])
    x, w, b = torch.randn(2, 48, *hw), torch.randn(16, 48) / 7, torch.randn(16)
    out = native.la_reduce(layout(x, kind), w, b)
    check_output(out, R.la_reduce(x, R.pack_conv_weight(w[:, :, None, None]), b))


def test_la_reduce_propagates_nan_as_max_pool(native):
    x = torch.randn(1, 48, 7, 10)
    x[0, 5, 3, 8] = float("nan")
    w, b = torch.randn(16, 48) / 7, torch.randn(16)
    out = native.la_reduce(x, w, b)
    ref = R.la_reduce(x, R.pack_conv_weight(w[:, :, None, None]), b)
    assert torch.equal(out.isnan(), ref.isnan()) and out.isnan().any()
    assert (out - ref).nan_to_num().abs().max() <= FP32_TOL


def test_low_precision_input_is_read_as_float32(native):
    """The functions load through the input's own type (the CUDA kernels' fp16/bf16 path); the
    CPU versions convert on read and write float32."""
    x = torch.randn(2, 48, 11, 13).to(torch.bfloat16)
    w, b = torch.randn(16, 48) / 7, torch.randn(16)
    out = native.la_reduce(x, w, b)
    assert out.dtype == torch.float32
    assert (out - R.la_reduce(x.float(), R.pack_conv_weight(w[:, :, None, None]), b)).abs().max() <= FP32_TOL


@pytest.mark.parametrize("op,args,match", [
    ("bsb", lambda: (torch.randn(1, 40, 5, 5), torch.randn(40, 40), torch.randn(40, 9), torch.randn(40), None),
     r"no kernel for C=40; instantiated for C in \{36\}"),
    ("esa_out", lambda: (torch.randn(1, 48, 15, 15), torch.randn(1, 16, 1, 1), torch.randn(16, 48), torch.randn(16),
                         torch.randn(48, 16), torch.randn(48), None), r"no kernel for \(C, CR\)=\(48, 16\)"),
    ("la_reduce", lambda: (torch.randn(1, 36, 9, 9), torch.randn(16, 36), torch.randn(16)),
     r"no kernel for \(C, CR\)=\(36, 16\)"),
    ("bsb", lambda: (torch.randn(1, 36, 1, 5), torch.randn(36, 36), torch.randn(36, 9), torch.randn(36), None),
     "reflect padding needs H, W >= 2"),
    ("la_reduce", lambda: (torch.randn(1, 48, 6, 9), torch.randn(16, 48), torch.randn(16)),
     "smaller than the 7x7 window"),
])
def test_unsupported_shapes_are_refused_with_a_clear_error(native, op, args, match):
    with pytest.raises(RuntimeError, match=match):
        getattr(native, op)(*args())
