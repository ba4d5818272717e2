"""Each esr:: op against its PyTorch reference (esr_kernels.reference), over dtypes, layouts,
odd and minimum sizes, batch 2, and torch.library.opcheck. On CPU these run under Triton's
interpreter at small shapes; on a GPU the same tests use larger ones."""
from __future__ import annotations

import pytest
import torch

from esr_kernels import reference as R
from esr_kernels.op_args import CONV, ESA
from esr_kernels.spec import (ACT_GELU, ACT_LEAKY, ACT_NONE, ACT_SIGMOID, ACT_SILU, RES_GATED_INPUT,
                              RES_NONE, RES_SPAN_ATT, RES_TENSOR, SHORTCUT_NONE, SHORTCUT_REPEAT_INPUT,
                              SHORTCUT_VECTOR)

pytestmark = pytest.mark.triton

# Relative-error bound (||out - ref|| / ||ref||, ref computed in float32 from the same
# low-precision inputs and weights). float32: both sides accumulate in float32, so only the
# summation order differs. float16/bfloat16: the kernels round the prologued input and the
# weights to the dtype once (<= eps/2 each) and the output once (eps/2), so a few eps at most.
REL_TOL = {torch.float32: 1e-6, torch.float16: 4 * 2.0 ** -11, torch.bfloat16: 4 * 2.0 ** -8}
DTYPES = list(REL_TOL)
LAYOUTS = ["nchw", "channels_last", "strided"]


@pytest.fixture(autouse=True)
def _ops():
    import esr_kernels.ops  # noqa: F401  registers torch.ops.esr


def ops():
    return torch.ops.esr


def make_input(shape, dtype, layout, device):
    n, c, h, w = shape
    if layout == "strided":  # a non-contiguous view: channel and column slices
        return torch.randn(n, c + 3, h, w + 5, device=device).to(dtype)[:, 1:c + 1, :, 2:w + 2]
    x = torch.randn(shape, device=device).to(dtype)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def rel_err(out, ref):
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def size(on_gpu, cpu_hw, gpu_hw):
    return gpu_hw if on_gpu else cpu_hw


def upcast(*ts):
    return [t.float() if isinstance(t, torch.Tensor) else t for t in ts]


# ---------------------------------------------------------------- schemas
def test_schemas_generated_from_the_field_lists_are_the_ops_own():
    """esr::conv and esr::esa take their arguments from esr_kernels.op_args (CONV, ESA): the
    schemas are what they always were."""
    assert str(ops().conv.default._schema) == (
        "esr::conv(Tensor x, Tensor w_packed, Tensor bias, SymInt c_conv, SymInt c_out, SymInt ksize, SymInt stride, "
        "SymInt padding, SymInt act, Tensor? residual, SymInt residual_mode, Tensor? att, bool gate_input, "
        "Tensor? shift, Tensor? shortcut, SymInt shortcut_mode, SymInt shuffle) -> Tensor")
    assert str(ops().esa.default._schema) == (
        "esr::esa(Tensor x, Tensor reduce_w, Tensor reduce_b, Tensor down_w, Tensor down_b, Tensor low_w, "
        "Tensor low_b, Tensor skip_w, Tensor skip_b, Tensor expand_w, Tensor expand_b, Tensor? residual) -> Tensor")


# ---------------------------------------------------------------- esr::conv
CONV_CASES = {
    # name: (c_in, c_conv, c_out, ksize, stride, act, residual_mode, gate_input, att, shift, shortcut_mode, shuffle)
    "3x3_gelu": (36, 36, 36, 3, 1, ACT_GELU, RES_NONE, False, False, False, SHORTCUT_NONE, 0),
    "head_shift": (3, 36, 36, 3, 1, ACT_NONE, RES_NONE, False, False, True, SHORTCUT_NONE, 0),
    "1x1_wide_residual": (216, 36, 36, 1, 1, ACT_GELU, RES_TENSOR, False, False, False, SHORTCUT_NONE, 0),
    "leaky_residual": (46, 46, 46, 3, 1, ACT_LEAKY, RES_TENSOR, False, False, False, SHORTCUT_NONE, 0),
    "stride2_small": (16, 16, 16, 3, 2, ACT_NONE, RES_NONE, False, False, False, SHORTCUT_NONE, 0),
    "sigmoid_expand": (16, 48, 48, 3, 1, ACT_SIGMOID, RES_NONE, False, False, False, SHORTCUT_NONE, 0),
    "gated_input": (48, 48, 48, 3, 1, ACT_SILU, RES_NONE, True, True, False, SHORTCUT_NONE, 0),
    "gated_partial": (48, 24, 48, 3, 1, ACT_SILU, RES_NONE, True, True, False, SHORTCUT_NONE, 0),
    "partial_24in": (24, 24, 48, 3, 1, ACT_SILU, RES_NONE, False, False, False, SHORTCUT_NONE, 0),
    "gated_residual": (48, 48, 48, 3, 1, ACT_SILU, RES_GATED_INPUT, False, True, False, SHORTCUT_NONE, 0),
    "span_att": (28, 28, 28, 3, 1, ACT_NONE, RES_SPAN_ATT, False, False, False, SHORTCUT_NONE, 0),
    "span_att_1x1_gelu": (26, 26, 26, 1, 1, ACT_GELU, RES_SPAN_ATT, False, False, False, SHORTCUT_NONE, 0),
    "tail_repeat_shuffle": (48, 48, 48, 3, 1, ACT_NONE, RES_NONE, False, False, False, SHORTCUT_REPEAT_INPUT, 4),
    "tail_vector_shuffle": (36, 48, 48, 3, 1, ACT_NONE, RES_NONE, False, False, False, SHORTCUT_VECTOR, 4),
}


def conv_args(case, n, h, w, dtype, layout, device):
    c_in, c_conv, c_out, k, stride, act, rmode, gate_in, has_att, has_shift, smode, shuffle = CONV_CASES[case]
    x_channels = 48 if case == "partial_24in" else c_in
    x = make_input((n, x_channels, h, w), dtype, layout, device)
    weight = torch.randn(c_conv, c_in, k, k, device=device) / (c_in * k * k) ** 0.5
    w_packed = R.pack_conv_weight(weight, c_out).to(dtype)
    bias = torch.zeros(w_packed.shape[-1], device=device)
    bias[:c_conv] = torch.randn(c_conv, device=device) * 0.1
    ho = (h + 2 * (k // 2) - k) // stride + 1
    wo = (w + 2 * (k // 2) - k) // stride + 1
    residual = make_input((n, c_out, ho, wo), dtype, layout, device) if rmode != RES_NONE else None
    att = torch.rand(n, x_channels, max(h // 6, 1), max(w // 6, 1), device=device).to(dtype) if has_att else None
    shift = torch.rand(c_in, device=device) if has_shift else None
    shortcut = None
    if smode == SHORTCUT_REPEAT_INPUT:
        shortcut = torch.rand(n, 3, h, w, device=device).to(dtype)
    elif smode == SHORTCUT_VECTOR:
        shortcut = torch.rand(3, device=device)
    return (x, w_packed, bias, c_conv, c_out, k, stride, k // 2, act, residual, rmode, att, gate_in,
            shift, shortcut, smode, shuffle)


@pytest.fixture(params=["v1", "v2"])
def conv_kernel(request):
    """Each esr::conv, esr::bsb, esr::esa and esr::la_reduce test runs both dense-conv kernels
    (ESR_TRITON_CONV's v1 and v2; v2 sends the gated cases, and on a GPU IEEE float32, to v1
    itself; with v2, BSB is the pointwise conv once and a depthwise kernel, ESA and la_reduce
    v2's kernels: configs.aux_version)."""
    from esr_kernels.triton.configs import conv_kernel as choose

    with choose(request.param):
        yield request.param


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_matches_reference(case, layout, dtype, device, on_gpu, conv_kernel):
    h, w = size(on_gpu, (13, 17), (67, 131))
    args = conv_args(case, 2, h, w, dtype, layout, device)
    out = ops().conv(*args)
    ref = R.conv(*CONV.split(upcast(*args)))
    assert out.dtype == dtype and out.shape == ref.shape
    assert torch.isfinite(out).all()
    assert rel_err(out, ref) <= REL_TOL[dtype]
    if CONV_CASES[case][-1] == 0 and conv_kernel == "v2":
        # v2's layout, whatever the input's: channels innermost, pixels padded to 8 elements
        assert out.stride(1) == 1 and out.stride(3) % 8 == 0 and out.stride(3) >= out.shape[1]
    elif layout == "channels_last" and CONV_CASES[case][-1] == 0:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("case", ["3x3_gelu", "gated_partial", "gated_residual", "span_att", "tail_repeat_shuffle"])
def test_conv_opcheck(case, device, conv_kernel):
    args = conv_args(case, 2, 9, 11, torch.float32, "nchw", device)
    torch.library.opcheck(torch.ops.esr.conv.default, args)


# ---------------------------------------------------------------- esr::bsb
def bsb_args(n, c, h, w, dtype, layout, device, residual=True):
    from esr_kernels.packing import pack_bias
    from esr_kernels.triton.bsb import pack_depthwise

    x = make_input((n, c, h, w), dtype, layout, device)
    pw = R.pack_conv_weight(torch.randn(c, c, 1, 1, device=device) / c ** 0.5).to(dtype)
    dw = torch.randn(c, 1, 3, 3, device=device) / 3
    bias = pack_bias(torch.randn(c, device=device) * 0.1, c, device)
    res = make_input((n, c, h, w), dtype, layout, device) if residual else None
    return (x, pw, pack_depthwise(dw, pw.shape[-1]), bias, res), dw


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hw", [(2, 2), (13, 17)], ids=["minimum", "odd"])
def test_bsb_matches_reference(hw, layout, dtype, device, conv_kernel):
    args, dw = bsb_args(2, 36, *hw, dtype, layout, device)
    x, pw, _, bias, res = args
    out = ops().bsb(*args)
    ref = R.bsb(x.float(), pw.float(), dw, bias[:36], res.float())
    assert out.shape == x.shape and rel_err(out, ref) <= REL_TOL[dtype]


def test_bsb_reflect_excludes_the_edge(device, conv_kernel):
    # One bright pixel in the first row: with PyTorch's reflect padding, row -1 mirrors row 1,
    # so the output of row 0 must not see row 0 twice. Compare against F.pad(mode='reflect').
    args, dw = bsb_args(1, 16, 5, 6, torch.float32, "nchw", device, residual=False)
    x = torch.zeros_like(args[0])
    x[:, :, 0, 3] = 1.0
    args = (x,) + args[1:]
    assert rel_err(ops().bsb(*args), R.bsb(x, args[1], dw, args[3][:16])) <= 1e-6


def test_bsb_opcheck(device, conv_kernel):
    args, _ = bsb_args(2, 36, 7, 9, torch.float32, "nchw", device)
    torch.library.opcheck(torch.ops.esr.bsb.default, args)


# ---------------------------------------------------------------- esr::esa
def esa_args(n, c, h, w, dtype, layout, device, residual=True):
    import dataclasses

    from esr_kernels.packing import fold_esa, pack_esa
    from esr_models.arch import layers

    m = layers.ESA(c, 16).to(device)
    for p in m.parameters():
        torch.nn.init.normal_(p, 0, 0.3)
    packed = pack_esa(dataclasses.replace(fold_esa(m), dtype=dtype))
    x = make_input((n, c, h, w), dtype, layout, device)
    res = make_input((n, c, h, w), dtype, layout, device) if residual else None
    return ESA.join(x, packed, res), m


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hw", [(15, 15), (47, 59)], ids=["minimum", "odd"])
def test_esa_matches_reference_and_module(hw, layout, dtype, device, conv_kernel):
    """v1's ESA kernels and, with the v2 conv, v2's (triton/esa_tc.py: 36 channels as 32 + 16
    columns, the pool once per pooled pixel)."""
    args, module = esa_args(2, 36, *hw, dtype, layout, device)
    out = ops().esa(*args)
    ref = R.esa(*ESA.split(upcast(*args)))
    assert rel_err(out, ref) <= REL_TOL[dtype]
    if dtype == torch.float32:  # the folded 1x1 branch changes nothing beyond rounding
        with torch.no_grad():
            module_ref = module(args[0].float()) + args[-1].float()
        assert rel_err(out, module_ref) <= REL_TOL[torch.float32]


def test_esa_without_residual_and_opcheck(device, conv_kernel):
    args, _ = esa_args(1, 46, 20, 23, torch.float32, "nchw", device, residual=False)
    assert rel_err(ops().esa(*args), R.esa(*ESA.split(args))) <= 1e-6
    torch.library.opcheck(torch.ops.esr.esa.default, args)


# ---------------------------------------------------------------- esr::concat_conv
def concat_conv_args(k, c_f, c_out, n, h, w, dtype, layout, device, act=ACT_GELU, residual=True, mode=RES_TENSOR):
    feats = [make_input((n, c_f, h, w), dtype, layout, device) for _ in range(k)]
    weight = torch.randn(c_out, k * c_f, 1, 1, device=device) / (k * c_f) ** 0.5
    w_packed = R.pack_conv_weight(weight).to(dtype)
    bias = torch.zeros(w_packed.shape[-1], device=device)
    bias[:c_out] = torch.randn(c_out, device=device)
    res = make_input((n, c_out, h, w), dtype, layout, device) if residual else None
    return feats, w_packed, bias, c_out, act, mode if residual else RES_NONE, res


def concat_conv_ref(feats, w_packed, bias, c_out, act, mode, res):
    """reference.concat_conv with the packed (rounded) weights; SPAN's attention by reference.conv's rule."""
    k_cf = w_packed.shape[1]
    weight = w_packed.float()[0, :, :c_out].t().reshape(c_out, k_cf, 1, 1)
    if mode == RES_SPAN_ATT:
        y = R.concat_conv([f.float() for f in feats], weight, bias[:c_out], act)
        return (y + res.float()) * (torch.sigmoid(y) - 0.5)
    return R.concat_conv([f.float() for f in feats], weight, bias[:c_out], act, None if res is None else res.float())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("case", ["ifadnet_fuse", "span_conv_cat", "one_feature_span_att", "narrow_features"])
def test_concat_conv_matches_reference(case, layout, dtype, device, on_gpu):
    """IFADNet's fusion (6 x 36 -> 36, GELU + residual: each feature's last K block partly
    masked), SPAN's (4 x 48 -> 48, nothing fused), one odd-width feature with SPAN's attention
    residual, 5 features of 6 channels; odd sizes, batch 2."""
    h, w = size(on_gpu, (13, 17), (67, 131))
    k, c_f, c_out, act, residual, mode = {"ifadnet_fuse": (6, 36, 36, ACT_GELU, True, RES_TENSOR),
                                          "span_conv_cat": (4, 48, 48, ACT_NONE, False, RES_NONE),
                                          "one_feature_span_att": (1, 37, 29, ACT_SILU, True, RES_SPAN_ATT),
                                          "narrow_features": (5, 6, 20, ACT_LEAKY, True, RES_TENSOR)}[case]
    args = concat_conv_args(k, c_f, c_out, 2, h, w, dtype, layout, device, act, residual, mode)
    out = ops().concat_conv(*args)
    ref = concat_conv_ref(*args)
    assert out.dtype == dtype and out.shape == ref.shape and torch.isfinite(out).all()
    assert rel_err(out, ref) <= REL_TOL[dtype]


def test_concat_conv_reads_features_of_different_layouts_and_refuses_mismatches(device):
    """The kernel addresses every feature with the first's strides: others are brought to them."""
    feats, *rest = concat_conv_args(3, 16, 20, 2, 9, 11, torch.float32, "nchw", device)
    mixed = [feats[0], feats[1].contiguous(memory_format=torch.channels_last),
             make_input(feats[2].shape, torch.float32, "strided", device).copy_(feats[2])]
    assert rel_err(ops().concat_conv(mixed, *rest), concat_conv_ref(feats, *rest)) <= REL_TOL[torch.float32]
    with pytest.raises(ValueError, match="features differ"):
        ops().concat_conv([feats[0], feats[1][:, :, :8]], *rest)
    with pytest.raises(ValueError, match="expects 48 input channels, the 2 features have 32"):
        ops().concat_conv(feats[:2], *rest)
    with pytest.raises(ValueError, match="1 to 6 features, got 7"):
        big = concat_conv_args(7, 16, 20, 1, 3, 3, torch.float32, "nchw", device)
        ops().concat_conv(*big)


def test_concat_conv_opcheck(device):
    torch.library.opcheck(torch.ops.esr.concat_conv.default,
                          concat_conv_args(6, 16, 24, 2, 5, 7, torch.float32, "nchw", device))


def test_triton_backend_concat_conv_reads_the_features_in_place_under_v1(device, monkeypatch):
    """The fused models' concat_conv (IFADNet's fusion, SPAN's) goes through esr::concat_conv
    under v1, with no torch.cat; under v2 it still makes the concatenation for conv_tc."""
    from esr_kernels.triton.configs import conv_kernel as choose
    from esr_kernels.triton_backend import TritonBackend
    from esr_kernels.op_args import ConvEpilogue

    backend = TritonBackend()
    feats = [torch.randn(2, 8, 6, 7, device=device) for _ in range(6)]
    weight, bias, res = torch.randn(8, 48, 1, 1, device=device), torch.randn(8, device=device), torch.randn(2, 8, 6, 7, device=device)
    pack = backend.pack_concat_conv(weight, bias, 6, ConvEpilogue(act=ACT_GELU, residual_mode=RES_TENSOR))
    ref = R.concat_conv(feats, weight, bias, ACT_GELU, res)
    cats, real_cat = [], torch.cat
    monkeypatch.setattr(torch, "cat", lambda ts, *a, **kw: cats.append(len(ts)) or real_cat(ts, *a, **kw))
    for choice, expect_cat in (("v1", False), ("v2", True)):
        cats.clear()
        with choose(choice):
            out = backend.concat_conv(feats, pack, res)
        assert rel_err(out, ref) <= REL_TOL[torch.float32], choice
        assert (6 in cats) == expect_cat, (choice, cats)


# ---------------------------------------------------------------- esr::la_reduce
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hw", [(7, 7), (23, 40)], ids=["minimum", "odd"])
def test_la_reduce_matches_reference(hw, layout, dtype, device, conv_kernel):
    """v1's kernel and, with the v2 conv, v2's (the 1x1 once per input pixel of a pooled tile)."""
    x = make_input((2, 48, *hw), dtype, layout, device)
    w = R.pack_conv_weight(torch.randn(16, 48, 1, 1, device=device) / 7).to(dtype)
    b = torch.randn(16, device=device)
    out = ops().la_reduce(x, w, b)
    ref = R.la_reduce(x.float(), w.float(), b)
    assert out.shape == ref.shape and rel_err(out, ref) <= REL_TOL[dtype]


def test_la_reduce_opcheck(device, conv_kernel):
    x = torch.randn(2, 48, 10, 13, device=device)
    w = R.pack_conv_weight(torch.randn(16, 48, 1, 1, device=device))
    torch.library.opcheck(torch.ops.esr.la_reduce.default, (x, w, torch.randn(16, device=device)))


@pytest.mark.gpu
@pytest.mark.slow
def test_int64_offsets_past_2_31(device):
    """A tensor of more than 2^31 elements: offsets must not wrap."""
    n, c, h, w = 1, 36, 7000, 9000  # 2.27e9 elements, fp16: 4.5 GB
    x = torch.randn(n, c, h, w, device=device, dtype=torch.float16)
    args, dw = bsb_args(1, 36, 4, 4, torch.float16, "nchw", device, residual=False)
    out = ops().bsb(x, *args[1:])
    tail = x[..., -4:, -4:].contiguous()
    ref = R.bsb(tail.float(), args[1].float(), dw, args[3][:36])
    # Interior of the bottom-right corner (the last row/col see reflected neighbours only).
    assert rel_err(out[..., -3:-1, -3:-1], ref[..., 1:3, 1:3]) <= REL_TOL[torch.float16] * 2


# ---------------------------------------------------------------- esr::gate
def gate_args(n, c, h, w, dtype, layout, device):
    x = make_input((n, c, h, w), dtype, layout, device)
    att = torch.rand(n, c, max(h // 6, 1), max(w // 6, 1), device=device).to(dtype)
    return x, att


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("hw", [(1, 1), (23, 40)], ids=["minimum", "odd"])
def test_gate_matches_reference(hw, layout, dtype, device):
    """LocalAttention's gate stored (PFDNLite under the v2 conv): x * up(att) * sigmoid(x[:, 0]),
    48 and 46 channels (a partial channel block), batch 2."""
    for c in (48, 46):
        x, att = gate_args(2, c, *hw, dtype, layout, device)
        out = ops().gate(x, att)
        ref = R.gate(x.float(), att.float())
        assert out.dtype == dtype and out.shape == ref.shape and torch.isfinite(out).all()
        assert rel_err(out, ref) <= REL_TOL[dtype], c


def test_gate_refuses_a_mismatched_map_and_passes_opcheck(device):
    x, att = gate_args(2, 16, 9, 11, torch.float32, "nchw", device)
    with pytest.raises(ValueError, match="att must be"):
        ops().gate(x, att[:, :8])
    torch.library.opcheck(torch.ops.esr.gate.default, (x, att))


# ---------------------------------------------------------------- fakes: dtype, shape, strides
def _op_cases(layout, dtype, device):
    """(op, args) for every esr:: op, at small odd sizes with batch 2."""
    x = make_input((2, 48, 15, 17), dtype, layout, device)
    w = R.pack_conv_weight(torch.randn(16, 48, 1, 1, device=device) / 7).to(dtype)
    esa, _ = esa_args(2, 46, 15, 17, dtype, layout, device)
    bsb, _ = bsb_args(2, 36, 5, 7, dtype, layout, device)
    cases = [(f"conv_{c}", ops().conv.default, conv_args(c, 2, 9, 11, dtype, layout, device))
             for c in ("3x3_gelu", "gated_partial", "stride2_small", "tail_repeat_shuffle")]
    cat = ("concat_conv", ops().concat_conv.default, concat_conv_args(3, 16, 24, 2, 9, 11, dtype, layout, device))
    return cases + [cat, ("bsb", ops().bsb.default, bsb), ("esa", ops().esa.default, esa),
                    ("la_reduce", ops().la_reduce.default, (x, w, torch.randn(16, device=device))),
                    ("gate", ops().gate.default, gate_args(2, 48, 15, 17, dtype, layout, device))]


@pytest.mark.parametrize("dtype", [torch.float32], ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_op_fake_gives_the_real_outputs_dtype_shape_and_strides(layout, dtype, device):
    """What torch.compile plans with (the fake) is what the kernel returns."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    for name, op, args in _op_cases(layout, dtype, device):
        out = op(*args)
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
            fake = op(*fake_args)
        assert (fake.dtype, fake.shape, fake.stride()) == (out.dtype, out.shape, out.stride()), name
