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


@pytest.mark.parametrize("case", ["partial", "gated_residual", "span_att", "repeat_shuffle", "vector_shuffle"])
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
    elif case == "span_att":  # after oneDNN's conv, its activation a post-op: act NONE here
        out = native.conv_epilogue(y, None, 48, 0, x, 3, None, None, 0, 0)
        ref = (y + x) * (torch.sigmoid(y) - 0.5)
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


@pytest.mark.parametrize("c,stride", [(28, 1), (26, 2)])
def test_conv3x3_im2col_with_span_attention(native, c, stride):
    """SPAN's attention epilogue (RES_SPAN_ATT) on the im2col GEMM at SPAN's widths, odd size,
    batch 2, against reference.conv."""
    from esr_kernels.op_args import ConvEpilogue, ConvGeometry
    from esr_kernels.packing import pack_im2col_3x3, pad_vector, round_up16
    from esr_kernels.spec import ACT_NONE, RES_SPAN_ATT

    if not native.conv_engine_available():
        pytest.skip("no conv engine at the ISA level that runs (it needs AVX2)")
    x, w, b = torch.randn(2, c, 47, 59), torch.randn(c, c, 3, 3) / (3 * c ** 0.5), torch.randn(c)
    ho, wo = (47 - 1) // stride + 1, (59 - 1) // stride + 1
    res = torch.randn(2, c, ho, wo)
    y = native.conv3x3_im2col(x, pack_im2col_3x3(w), pad_vector(b, round_up16(c), w), stride, 1, c, ACT_NONE, None,
                              c, res, RES_SPAN_ATT, None, None, 0, 0)
    ref = R.conv(x, R.pack_conv_weight(w), b, ConvGeometry(c, c, 3, stride, 1),
                 ConvEpilogue(residual=res, residual_mode=RES_SPAN_ATT))
    assert y.shape == ref.shape and (y - ref).abs().max() <= FP32_TOL


def test_esa_gate_1x1_with_its_input_conv_folded(native):
    """input_conv: ESA of a 1x1 conv's output, the conv never stored (w: [conv | gate through it])."""
    from esr_kernels.packing import pack_gemm_1x1

    if not native.conv_engine_available():
        pytest.skip("no conv engine at the ISA level that runs (it needs AVX2)")
    g = torch.Generator().manual_seed(5)
    c, cp = 36, 48
    y, low = torch.randn(2, c, 17, 19, generator=g), torch.randn(2, c, 2, 3, generator=g)
    w, b = torch.randn(c, c, 1, 1, generator=g) / 6, torch.randn(c, generator=g)
    wg, bg = torch.randn(c, c, 1, 1, generator=g) / 6, torch.randn(c, generator=g)
    both_w, both_b = torch.zeros(2 * cp, c, 1, 1, dtype=torch.float64), torch.zeros(2 * cp, dtype=torch.float64)
    both_w[:c], both_b[:c] = w, b
    both_w[cp:cp + c] = (wg.double()[:, :, 0, 0] @ w.double()[:, :, 0, 0])[:, :, None, None]
    both_b[cp:cp + c] = wg.double()[:, :, 0, 0] @ b.double() + bg
    args = (cl(y), pack_gemm_1x1(both_w), both_b.float(), low, None, True)
    x = F.conv2d(y.double(), w.double(), b.double())
    ref = x * torch.sigmoid(F.conv2d(x, wg.double(), bg.double()) + R.upsample(low.double(), (17, 19)))
    assert (native.esa_gate_1x1(*args) - ref).abs().max() <= FP32_TOL
    torch.library.opcheck(native.esa_gate_1x1.default, args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backend_folds_rlfn_tail_conv_into_esa(dtype):
    """conv_esa on the CPU backend (the 1x1 folded into ESA's passes) against the contract's
    default, esa(conv(x)), at RLFN's 46 channels (padded to 48 inside) and an odd size."""
    from esr_kernels.contract import ConvThenEsa, KernelBackend
    from esr_kernels.cpu_backend import CpuBackend, CpuConvEsa
    from esr_kernels.packing import fold_esa
    from esr_models.arch.layers import ESA

    backend = CpuBackend()
    if not backend.engine or (dtype == torch.bfloat16 and not backend.bf16_engine):
        pytest.skip("no conv engine (or no bf16 GEMM) at the ISA level that runs")
    torch.manual_seed(6)
    esa, mix = ESA(46, 16).to(dtype), torch.nn.Conv2d(46, 46, 1).to(dtype)
    x = torch.randn(2, 46, 23, 31)
    folded = backend.pack_conv_esa(mix.weight, mix.bias, fold_esa(esa))
    plain = KernelBackend.pack_conv_esa(backend, mix.weight, mix.bias, fold_esa(esa))
    assert isinstance(folded, CpuConvEsa) and isinstance(plain, ConvThenEsa)
    with torch.no_grad():
        got, want = backend.conv_esa(x, folded), backend.conv_esa(x, plain)
        truth = esa.double()(mix.double()(x.double()))
    assert got.shape == (2, 46, 23, 31)
    if dtype == torch.float32:
        assert (got - want).abs().max() <= FP32_TOL
    else:  # one bf16 rounding fewer than the unfolded pair: no farther from the truth
        assert (got - truth).abs().max() <= 2 * (want - truth).abs().max()
