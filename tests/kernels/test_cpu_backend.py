"""The native CPU extension's own kernels (esr_kernels._C_cpu) against the references, one op at
a time, where tests/kernels/test_native_ops.py does not check values (esa_tail) or at more sizes. The
fused models on this backend: tests/models/test_fused_models.py (one suite for every backend)."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from esr_kernels import reference as R
from esr_kernels.spec import POOL_KERNEL, POOL_STRIDE

pytestmark = pytest.mark.native_cpu  # skipped unless the extension is built (conftest)
FP32_TOL = 1e-5


@pytest.fixture(scope="module")
def native():
    import esr_kernels._C_cpu  # noqa: F401
    import esr_kernels.native  # noqa: F401

    return torch.ops.esr_native


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("hw", [(2, 2), (13, 17)], ids=["minimum", "odd"])
def test_bsb_dw_is_reflect_depthwise_gelu(native, hw):
    p = torch.randn(2, 36, *hw)
    w, b, res = torch.randn(36, 1, 3, 3), torch.randn(36), torch.randn(2, 36, *hw)
    out = native.bsb_dw(cl(p), w, b, res)
    ref = F.gelu(F.conv2d(F.pad(p, (1, 1, 1, 1), mode="reflect"), w, b, groups=36)) + res
    assert (out - ref).abs().max() <= 1e-5


def test_gate_matches_reference(native):
    x, att = torch.randn(2, 48, 19, 23), torch.rand(2, 48, 4, 5)
    assert (native.gate(x, att) - R.gate(x, att)).abs().max() <= 1e-6


@pytest.mark.parametrize("case", ["partial", "gated_residual", "repeat_shuffle", "vector_shuffle"])
def test_conv_epilogue(native, case):
    n, h, w = 2, 9, 11
    y = torch.randn(n, 24 if case == "partial" else 48, h, w)
    x = torch.randn(n, 48, h, w)
    att = torch.rand(n, 48, 2, 3)
    if case == "partial":
        out = native.conv_epilogue(y, x, 48, 2, None, 0, None, None, 0, 0)
        ref = torch.cat([F.silu(y), x[:, 24:]], 1)
    elif case == "gated_residual":
        out = native.conv_epilogue(y, None, 48, 2, x, 2, att, None, 0, 0)
        ref = F.silu(y) + R.gate(x, att)
    elif case == "repeat_shuffle":
        img = torch.rand(n, 3, h, w)
        out = native.conv_epilogue(y, None, 48, 0, None, 0, None, img, 1, 4)
        ref = F.pixel_shuffle(y + torch.repeat_interleave(img, 16, 1), 4)
    else:
        vec = torch.rand(3)
        out = native.conv_epilogue(y, None, 48, 0, None, 0, None, vec, 2, 4)
        ref = F.pixel_shuffle(y, 4) + vec.view(1, 3, 1, 1)
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5


def test_esa_tail(native):
    x, s, low, res = torch.randn(2, 36, 17, 19), torch.randn(2, 36, 17, 19), torch.randn(2, 36, 2, 3), torch.randn(2, 36, 17, 19)
    up = F.interpolate(low, size=(17, 19), mode="bilinear", align_corners=False)
    assert (native.esa_tail(x, s, low, res) - (x * torch.sigmoid(s + up) + res)).abs().max() <= 1e-5


@pytest.mark.parametrize("hw", [(7, 7), (9, 8), (127, 127), (84, 85)])
def test_max_pool_7s3_is_floor_mode_max_pool(native, hw):
    x = torch.randn(2, 16, *hw)
    out = native.max_pool_7s3(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, F.max_pool2d(x, POOL_KERNEL, POOL_STRIDE))
    with pytest.raises(RuntimeError, match="smaller than the 7x7 window"):
        native.max_pool_7s3(torch.randn(1, 16, 6, 9))


@pytest.mark.parametrize("cin,stride,padding,hw", [(3, 1, 1, (13, 17)), (3, 1, 1, (1, 2)), (16, 2, 0, (15, 20)),
                                                   (16, 2, 1, (7, 8)), (5, 3, 1, (10, 11))],
                         ids=["head", "head_tiny", "esa_down", "stride2_pad1", "stride3_odd"])
def test_conv3x3_im2col_matches_conv2d_at_every_geometry(native, cin, stride, padding, hw):
    """The im2col GEMM (RGB heads, strided convs): every border case of its row copies."""
    from esr_kernels.packing import pack_im2col_3x3, pad_vector, round_up16

    if not native.conv_engine_available():
        pytest.skip("no conv engine at the ISA level that runs (it needs AVX2)")
    x, w, b = torch.randn(2, cin, *hw), torch.randn(20, cin, 3, 3) / (3 * cin ** 0.5), torch.randn(20)
    y = native.conv3x3_im2col(x, pack_im2col_3x3(w), pad_vector(b, round_up16(20), w), stride, padding, 20, 0, None,
                              20, None, 0, None, None, 0, 0)
    ref = F.conv2d(x.double(), w.double(), b.double(), stride=stride, padding=padding)
    assert y.shape == ref.shape
    assert (y - ref).abs().max() <= FP32_TOL
