"""bfloat16 and float16 on the native CPU backend: the conv engine's bf16 GEMM
(csrc/cpu/gemm_bf16.h, at the avx512_bf16 and amx ISA levels) op by op, and the fused models in
bf16 and fp16, by the relative rule: |fused - truth| <= 2 |reference in that dtype - truth| (max
abs), truth = the float32 (or float64) computation. Levels without vdpbf16ps run bf16 models on
the float32 kernels; a bf16 weight given to them is a clear error."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from esr_kernels import reference as R
from esr_kernels.packing import (pack_bsb_cpu, pack_direct_3x3_bf16, pack_gemm_1x1, pack_winograd_3x3, pad_vector,
                                 round_up16, vnni_pairs)
from esr_kernels.spec import ACT_GELU, ACT_NONE, RES_NONE, RES_SPAN_ATT, RES_TENSOR, SHORTCUT_NONE

pytestmark = pytest.mark.native_cpu  # skipped unless the extension is built (conftest)


def _bf16_engine() -> bool:
    from esr_kernels.policy import bf16_gemm_available, native_ops

    return bool(native_ops("_C_cpu").conv_engine_available()) and bf16_gemm_available()


needs_bf16 = pytest.mark.skipif("not _bf16_engine()", reason="this CPU (or ESR_CPU_ISA) has no AVX512_BF16 level")


@pytest.fixture(scope="module")
def native():
    from esr_kernels.policy import native_ops

    return native_ops("_C_cpu")


def err(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def test_vnni_pairs_layout():
    w = torch.arange(5 * 3, dtype=torch.float32).reshape(5, 3)  # K = 5 (odd), N = 3
    p = vnni_pairs(w)
    assert p.dtype == torch.bfloat16 and p.shape == (3, 6)
    assert p[1].tolist() == [6.0, 9.0, 7.0, 10.0, 8.0, 11.0]  # (w[2, n], w[3, n]) at 2n, 2n + 1
    assert p[2].tolist() == [12.0, 0.0, 13.0, 0.0, 14.0, 0.0]  # the odd row paired with zero
    chunked = vnni_pairs(torch.ones(3 + 4, 2), chunks=(3, 4))  # each input paired on its own
    assert chunked.shape == (2 + 2, 4)
    assert chunked[1].tolist() == [1.0, 0.0, 1.0, 0.0]


def _layouts(x):
    wide = torch.zeros(x.shape[0], x.shape[1], x.shape[2], x.shape[3] + 5)
    wide[..., 2:-3] = x
    return [x, x.contiguous(memory_format=torch.channels_last), wide[..., 2:-3]]


def _residual(y, res, mode):
    """The residual epilogue in y's dtype: + res (RES_TENSOR), or SPAN's attention (RES_SPAN_ATT)."""
    return y + res if mode == RES_TENSOR else (y + res) * (torch.sigmoid(y) - 0.5)


@needs_bf16
@pytest.mark.parametrize("cin,co,mode", [(13, 36, RES_TENSOR), (48, 36, RES_TENSOR), (28, 28, RES_SPAN_ATT),
                                         (26, 26, RES_SPAN_ATT)])
def test_winograd_bf16_within_twice_the_bf16_convs_error(native, cin, co, mode):
    g = torch.Generator().manual_seed(cin)
    x = torch.randn(2, cin, 47, 59, generator=g)
    w, b = torch.randn(co, cin, 3, 3, generator=g) / (3 * cin ** 0.5), torch.randn(co, generator=g)
    res = torch.randn(2, co, 47, 59, generator=g)
    truth = _residual(F.conv2d(x.double(), w.double(), b.double(), padding=1), res.double(), mode)
    own = _residual(F.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), padding=1), res.bfloat16(), mode).double()
    bp, tail = pad_vector(b, round_up16(co), w), (res, mode, None, None, SHORTCUT_NONE, 0)
    y32 = native.conv3x3_winograd(x, pack_winograd_3x3(w), bp, co, ACT_NONE, None, co, *tail)
    for xl in _layouts(x):
        y = native.conv3x3_winograd(xl, vnni_pairs(pack_winograd_3x3(w)), bp, co, ACT_NONE, None, co, *tail)
        assert y.dtype == torch.float32
        assert err(y, truth) <= 2 * err(own, truth)
        assert err(y, truth) > 10 * err(y32, truth)  # the bf16 GEMM ran, not the float32 one


@needs_bf16
@pytest.mark.parametrize("kind", [0, 1], ids=["own", "brgemm"])
@pytest.mark.parametrize("cin,co,stride,padding,size", [(13, 36, 1, 1, (47, 59)), (48, 80, 1, 1, (9, 70)),
                                                        (36, 36, 2, 0, (47, 59)), (16, 20, 1, 1, (1, 1)),
                                                        (9, 16, 2, 1, (3, 3))])
def test_direct_3x3_bf16_is_the_bf16_rounded_convolution(native, gemm_kind, kind, cin, co, stride, padding, size):
    """The direct bf16 3x3 conv (csrc/cpu/direct_bf16.cpp, conv3x3_im2col with bf16 taps: what
    the bf16 models run where the GEMMs are on AMX tiles) computes the products of the
    bf16-rounded input and weights summed in float32: equal to that convolution done in float64
    up to float32 summation (1e-5 of the scale), under either GEMM; odd channels, two brgemm
    panels (80 columns), stride 2, a 1x1 input, batch 2, every input layout (a channel slice
    read in place), a residual epilogue; and so within twice bf16's own error of the truth."""
    gemm_kind(kind)
    g = torch.Generator().manual_seed(cin + co)
    x = torch.randn(2, cin, *size, generator=g)
    w, b = torch.randn(co, cin, 3, 3, generator=g) / (3 * cin ** 0.5), torch.randn(co, generator=g)
    rounded = F.conv2d(x.bfloat16().double(), w.bfloat16().double(), b.double(), stride=stride, padding=padding)
    res = torch.randn(rounded.shape, generator=g)
    rounded = rounded + res.double()
    truth = F.conv2d(x.double(), w.double(), b.double(), stride=stride, padding=padding) + res.double()
    own = (F.conv2d(x.bfloat16(), w.bfloat16(), b.bfloat16(), stride=stride, padding=padding) + res.bfloat16()).double()
    wd = pack_direct_3x3_bf16(w)
    assert wd.dtype == torch.bfloat16 and wd.shape == (3, 9 * ((cin + 1) // 2), 2 * round_up16(co))
    for xl in _layouts(x):
        y = native.conv3x3_im2col(xl, wd, pad_vector(b, round_up16(co), w), stride, padding, co, ACT_NONE, None, co,
                                  res, RES_TENSOR, None, None, SHORTCUT_NONE, 0)
        assert y.shape == rounded.shape and y.dtype == torch.float32
        assert err(y, rounded) <= 1e-5 * rounded.abs().max().item()
        assert err(y, truth) <= 2 * err(own, truth)


@needs_bf16
@pytest.mark.parametrize("mode", [RES_NONE, RES_SPAN_ATT])
def test_conv1x1_bf16_over_concatenated_inputs_of_odd_widths(native, mode):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(2, c, 11, 13, generator=g) for c in (7, 12, 5)]
    w, b = torch.randn(20, 24, 1, 1, generator=g) / 5, torch.randn(20, generator=g)
    res = torch.randn(2, 20, 11, 13, generator=g) if mode != RES_NONE else None
    truth = F.conv2d(torch.cat(xs, 1).double(), w.double(), b.double())
    own = F.conv2d(torch.cat(xs, 1).bfloat16(), w.bfloat16(), b.bfloat16())
    if res is not None:
        truth, own = _residual(truth, res.double(), mode), _residual(own, res.bfloat16(), mode)
    own = own.double()
    w1 = vnni_pairs(pack_gemm_1x1(w), chunks=(7, 12, 5))
    y = native.conv1x1(xs, w1, pad_vector(b, round_up16(20), w), 20, ACT_NONE, None, 20, res, mode, None, None,
                       SHORTCUT_NONE, 0)
    assert y.shape == (2, 20, 11, 13)
    assert err(y, truth) <= 2 * err(own, truth)


@needs_bf16
def test_esa_gate_1x1_bf16(native):
    g = torch.Generator().manual_seed(3)
    x, w, b = torch.randn(2, 46, 17, 21, generator=g), torch.randn(46, 46, 1, 1, generator=g) / 7, torch.randn(46, generator=g)
    low = torch.randn(2, 46, 3, 4, generator=g)
    up = R.upsample(low.double(), (17, 21))
    truth = x.double() * torch.sigmoid(F.conv2d(x.double(), w.double(), b.double()) + up)
    xb = x.bfloat16()
    own = (xb * torch.sigmoid(F.conv2d(xb, w.bfloat16(), b.bfloat16()) + up.bfloat16())).double()
    y = native.esa_gate_1x1(x, vnni_pairs(pack_gemm_1x1(w)), pad_vector(b, round_up16(46), w), low, None, False)
    assert err(y, truth) <= 2 * err(own, truth)


@needs_bf16
def test_bsb_packed_bf16(native):
    g = torch.Generator().manual_seed(2)
    x, pw = torch.randn(2, 13, 9, 14, generator=g), torch.randn(13, 13, 1, 1, generator=g) / 4
    dw, db = torch.randn(13, 1, 3, 3, generator=g) * 0.3, torch.randn(13, generator=g)
    p = pack_bsb_cpu(pw, dw, db)
    y = native.bsb_packed(x, vnni_pairs(p["pw"]), p["taps"], p["bias"], None)
    truth = R.bsb(x.double(), R.pack_conv_weight(pw).double(), dw.double(), db.double())
    own = R.bsb(x.bfloat16(), R.pack_conv_weight(pw).bfloat16(), dw.bfloat16(), db.bfloat16()).double()
    assert err(y, truth) <= 2 * err(own, truth)


@needs_bf16
def test_opcheck_with_bf16_weights(native):
    x, w, b = torch.randn(1, 16, 6, 7), torch.randn(16, 16, 3, 3) / 12, torch.randn(16)
    tail = (16, ACT_GELU, None, 16, None, RES_NONE, None, None, SHORTCUT_NONE, 0)
    torch.library.opcheck(native.conv3x3_winograd.default, (x, vnni_pairs(pack_winograd_3x3(w)), b, *tail))
    torch.library.opcheck(native.conv3x3_im2col.default, (x, pack_direct_3x3_bf16(w), b, 1, 1, *tail))
    torch.library.opcheck(native.conv1x1.default, ([x], vnni_pairs(pack_gemm_1x1(w[:, :, :1, :1])), b, *tail))
    low = torch.randn(1, 16, 2, 3)
    torch.library.opcheck(native.esa_gate_1x1.default, (x, vnni_pairs(pack_gemm_1x1(w[:, :, :1, :1])), b, low, None,
                                                        False))


_NO_BF16_LEVEL = """
import torch, esr_kernels.policy as P
from esr_kernels.packing import pack_winograd_3x3, vnni_pairs
ops = P.native_ops("_C_cpu")
w = torch.randn(16, 16, 3, 3)
try:
    ops.conv3x3_winograd(torch.randn(1, 16, 6, 6), vnni_pairs(pack_winograd_3x3(w)), torch.zeros(16), 16, 0, None, 16,
                         None, 0, None, None, 0, 0)
except RuntimeError as e:
    print("ERROR", str(e).splitlines()[0])
print("NOTE", P.cpu_dtype_note(torch.bfloat16))
"""


def test_a_level_without_bf16_refuses_bf16_weights_and_says_so():
    from esr_kernels.policy import cpu_isa

    if (cpu_isa() or {}).get("cpu") not in ("avx512", "avx512_bf16", "amx"):
        pytest.skip("this CPU has no AVX-512 level to force")
    out = subprocess.run([sys.executable, "-c", _NO_BF16_LEVEL], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "ESR_CPU_ISA": "avx512"})
    assert out.returncode == 0, out.stderr
    assert "ERROR conv3x3_winograd: bf16 weights need the avx512_bf16 ISA level" in out.stdout
    assert "NOTE bfloat16 on CPU: the fused kernels compute in float32" in out.stdout


# ---------------------------------------------------------------- models
@pytest.mark.shared
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("name", ["ifadnet", "pfdnlite", "rlfn"])
def test_fused_models_in_low_precision(golden, name, dtype):
    """Odd size and batch 2 in channels_last, by the relative rule; bf16 runs the bf16 GEMM where
    the CPU has it; fp16 says it runs the float32 kernels."""
    import esr_models
    from esr_kernels.policy import bf16_gemm_available

    x, _ = golden(name, "baby", "cpu")  # real image content, two odd-sized crops
    x = torch.cat([x[..., :47, :59], x[..., 7:54, 11:70]]).contiguous(memory_format=torch.channels_last)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fused = esr_models.load(name, dtype=dtype, fused=True, backend="cpu")
    noted = any("compute in float32" in str(w.message) for w in caught)
    assert noted == (dtype == torch.float16 or not bf16_gemm_available())
    with torch.inference_mode():
        truth = esr_models.load(name)(x)
        own = esr_models.load(name, dtype=dtype)(x.to(dtype))
        out = fused(x.to(dtype))
    assert fused.backend == "cpu" and out.dtype == dtype and out.shape == truth.shape
    assert err(out, truth) <= 2 * err(own, truth)


@needs_bf16
@pytest.mark.shared
@pytest.mark.parametrize("direct", [False, True], ids=["winograd", "direct"])
@pytest.mark.parametrize("kind", [0, 1], ids=["own", "brgemm"])
@pytest.mark.parametrize("name", ["pfdnlite", "span"])
def test_bf16_models_with_either_gemm_and_3x3_path(monkeypatch, gemm_kind, golden, name, kind, direct):
    """Every combination of bf16 GEMM and 3x3 path a bf16 model can run, whichever this CPU picks
    by default ("auto": brgemm and direct on AMX, own and Winograd elsewhere), on real image
    content at an odd size, batch 2, by the relative rule; with the direct path, Winograd runs
    only for the float32 tail conv (the profiler counts the ops), without it for the others too."""
    import esr_models
    import esr_kernels.cpu_backend as CB

    gemm_kind(kind)
    monkeypatch.setattr(CB, "bf16_direct_3x3", lambda: direct)
    x, _ = golden(name, "baby", "cpu")
    x = torch.cat([x[..., :47, :59], x[..., 7:54, 11:70]]).contiguous(memory_format=torch.channels_last)
    fused = esr_models.load(name, dtype=torch.bfloat16, fused=True, backend="cpu")
    with torch.inference_mode():
        truth = esr_models.load(name)(x)
        own = esr_models.load(name, dtype=torch.bfloat16)(x.bfloat16())
        with torch.profiler.profile() as prof:
            out = fused(x.bfloat16())
    ops = [e.name for e in prof.events()]
    # Winograd is left only for the float32 tail conv under the direct path.
    assert (ops.count("esr_native::conv3x3_winograd") <= 1) == direct
    assert err(out, truth) <= 2 * err(own, truth)


@needs_bf16
@pytest.mark.shared
def test_bf16_model_keeps_the_output_conv_in_float32():
    """The tail conv writes the image: its rounding would go straight into the output, so it
    keeps float32 GEMM weights while the body's convs take bf16 pairs."""
    import esr_models
    from esr_models.fused.modules import FusedPixelShuffleTail

    model = esr_models.load("rlfn", dtype=torch.bfloat16, fused=True, backend="cpu")
    tails = [m for m in model.modules() if isinstance(m, FusedPixelShuffleTail)]
    assert len(tails) == 1 and tails[0].packs["conv"].u.dtype == torch.float32
    body = [p.u for m in model.modules() for p in getattr(m, "packs", {}).values() if getattr(p, "u", None) is not None]
    assert sum(u.dtype == torch.bfloat16 for u in body) >= 6


@pytest.mark.shared
def test_a_fused_model_converted_to_bf16_packs_again():
    """``fused.to(torch.bfloat16)`` packs from the converted weights (the CPU packs' dtypes are
    the backend's: bf16 GEMM pairs beside float32 biases), so it computes what
    ``load(dtype=bfloat16, fused=True)`` does, and back to float32 what the float32 model does."""
    import esr_models

    x = torch.rand(1, 3, 20, 18)
    direct = esr_models.load("pfdnlite", dtype=torch.bfloat16, fused=True, backend="cpu")
    converted = esr_models.load("pfdnlite", fused=True, backend="cpu").to(torch.bfloat16)
    back = esr_models.load("pfdnlite", dtype=torch.bfloat16, fused=True, backend="cpu").float()
    again = esr_models.load("pfdnlite", dtype=torch.bfloat16, fused=True, backend="cpu").to(torch.bfloat16)
    with torch.inference_mode():
        assert torch.equal(converted(x.bfloat16()), direct(x.bfloat16()))
        assert torch.equal(again(x.bfloat16()), direct(x.bfloat16()))  # .to(its own dtype), as Upscaler does
        from_bf16 = esr_models.load("pfdnlite", dtype=torch.bfloat16).float()  # the bf16-rounded weights
        assert err(back(x), from_bf16(x)) <= 1e-5


# ---------------------------------------------------------------- oneDNN's brgemm (ESR_CPU_GEMM)
@pytest.fixture
def gemm_kind(native):
    """Runs a test body under a chosen bf16 GEMM (0 own micro-kernel, 1 brgemm), restoring the
    process's choice (ESR_CPU_GEMM, set when the extension loaded) afterwards."""
    before = int(native.bf16_gemm())

    def use(kind: int) -> None:
        native.set_bf16_gemm(kind)
        assert int(native.bf16_gemm()) == kind

    yield use
    native.set_bf16_gemm(before)


def _bf16_ops(native, g):
    """The four bf16 GEMM ops, each a closure over fixed inputs: Winograd with 80 output
    channels (two brgemm panels: 64 + 16), conv1x1 over three inputs of odd widths (one matrix
    per input), ESA's gate with its input conv (2 x 48 columns), the fused BSB (47 x 59)."""
    x = torch.randn(2, 36, 47, 59, generator=g)
    w3, b3 = torch.randn(80, 36, 3, 3, generator=g) / 18, torch.randn(80, generator=g)
    u = vnni_pairs(pack_winograd_3x3(w3))
    tail = (None, RES_NONE, None, None, SHORTCUT_NONE, 0)
    xs = [torch.randn(2, c, 11, 13, generator=g) for c in (7, 12, 5)]
    w1, b1 = torch.randn(20, 24, 1, 1, generator=g) / 5, torch.randn(20, generator=g)
    w1p = vnni_pairs(pack_gemm_1x1(w1), chunks=(7, 12, 5))
    xe, we = torch.randn(2, 46, 17, 21, generator=g), torch.randn(46, 46, 1, 1, generator=g) / 7
    low = torch.randn(2, 46, 3, 4, generator=g)
    pw, dw, db = torch.randn(36, 36, 1, 1, generator=g) / 6, torch.randn(36, 1, 3, 3, generator=g) * .3, torch.randn(36, generator=g)
    bsb = pack_bsb_cpu(pw, dw, db)
    wd = pack_direct_3x3_bf16(w3)
    return {
        "direct_3x3": lambda: native.conv3x3_im2col(x, wd, pad_vector(b3, round_up16(80), w3), 1, 1, 80, ACT_NONE, None,
                                                    80, *tail),
        "direct_3x3_stride2": lambda: native.conv3x3_im2col(x, wd, pad_vector(b3, round_up16(80), w3), 2, 0, 80,
                                                            ACT_NONE, None, 80, *tail),
        "winograd": lambda: native.conv3x3_winograd(x, u, pad_vector(b3, round_up16(80), w3), 80, ACT_NONE, None, 80,
                                                    *tail),
        "conv1x1": lambda: native.conv1x1(xs, w1p, pad_vector(b1, round_up16(20), w1), 20, ACT_NONE, None, 20,
                                          *tail),
        "esa_gate_1x1": lambda: native.esa_gate_1x1(xe, vnni_pairs(pack_gemm_1x1(we)),
                                                    pad_vector(torch.zeros(46), round_up16(46), we), low, None, False),
        "bsb_packed": lambda: native.bsb_packed(x, vnni_pairs(bsb["pw"]), bsb["taps"], bsb["bias"], None),
    }


@needs_bf16
def test_brgemm_computes_what_the_own_bf16_gemm_computes(native, gemm_kind):
    """Issue 29, item 1: ESR_CPU_GEMM=brgemm runs the same bf16 products with float32
    accumulation through oneDNN's brgemm (AMX tiles where the CPU has them, its B packed by
    cpublas::pack), so the ops agree with the own micro-kernel up to float32 summation order:
    at most 1e-5 of the output's scale (on the AMD EPYC they are bit-identical)."""
    for name, op in _bf16_ops(native, torch.Generator().manual_seed(29)).items():
        gemm_kind(0)
        own = op()
        gemm_kind(1)
        brg = op()
        assert brg.shape == own.shape and torch.isfinite(brg).all(), name
        assert err(brg, own) <= 1e-5 * own.abs().max().item(), name


@needs_bf16
def test_brgemm_operands_are_made_once_per_weight_and_again_when_it_changes(native, gemm_kind):
    """Issue 29, item 1: brgemm's B operands (repacked by oneDNN on AMX) are made once per weight
    tensor and kept (csrc/cpu/brgemm_cache.h), not once per call; a weight changed in place is
    packed again (its version counter), so a kept operand is never stale; empty_cache drops them."""
    g = torch.Generator().manual_seed(291)
    x = torch.randn(2, 36, 13, 17, generator=g)
    w, b = torch.randn(40, 36, 3, 3, generator=g) / 18, torch.randn(40, generator=g)
    u, bp = vnni_pairs(pack_winograd_3x3(w)), pad_vector(b, round_up16(40), w)
    tail = (None, RES_NONE, None, None, SHORTCUT_NONE, 0)

    def run(weight):
        return native.conv3x3_winograd(x, weight, bp, 40, ACT_NONE, None, 40, *tail)

    gemm_kind(1)
    native.empty_cache()
    assert native.brgemm_cache_entries() == 0
    first = run(u)
    assert native.brgemm_cache_entries() == 1
    assert torch.equal(run(u), first) and native.brgemm_cache_entries() == 1  # kept, not made again
    u.mul_(2)  # in place: the kept operands are stale
    doubled = run(u)
    assert native.brgemm_cache_entries() == 1  # replaced, not added
    gemm_kind(0)
    own = run(u)  # the own kernel reads the weight itself
    assert err(doubled, own) <= 1e-5 * own.abs().max().item()
    assert not torch.equal(doubled, first)
    gemm_kind(1)
    run(u.clone())
    assert native.brgemm_cache_entries() == 2  # another weight tensor, another entry
    assert native.empty_cache() >= 0 and native.brgemm_cache_entries() == 0


def test_esr_cpu_gemm_is_parsed_once_and_checked(monkeypatch):
    from esr_kernels.env import CPU_GEMM_AUTO, cpu_gemm_choice
    from esr_kernels.errors import InvalidValueError

    monkeypatch.setenv("ESR_CPU_GEMM", " BRGEMM ")
    assert cpu_gemm_choice() == "brgemm"
    monkeypatch.setenv("ESR_CPU_GEMM", "")
    assert cpu_gemm_choice() == "auto" and "AMX" in CPU_GEMM_AUTO
    monkeypatch.setenv("ESR_CPU_GEMM", "amx")
    with pytest.raises(InvalidValueError, match="ESR_CPU_GEMM='amx': expected one of auto, own, brgemm"):
        cpu_gemm_choice()


_BRGEMM_PROCESS = """
import torch, esr_models
from esr_kernels.policy import native_ops
m = esr_models.load("rlfn", dtype=torch.bfloat16, fused=True, backend="cpu")
from esr_kernels.policy import available_backends
info = available_backends()
print("KIND", int(native_ops("_C_cpu").bf16_gemm()), info["cpu_bf16_gemm"]["gemm"])
print("AMX", int(info["cpu_isa_detail"]["cpu"] == "amx" and not info["cpu_isa_detail"]["requested"]
                and info["cpu_bf16_gemm"]["brgemm_on_amx_tiles"]))
with torch.inference_mode():
    y = m(torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0)).bfloat16())
torch.save(y, __import__("sys").argv[1])
"""


@needs_bf16
@pytest.mark.shared
def test_esr_cpu_gemm_brgemm_runs_a_whole_model(tmp_path):
    """The variable reaches the extension when it loads, and a bf16 model runs the same with
    either GEMM (the subprocess is the user's view: only the environment differs); unset
    ("auto"), brgemm runs exactly where it reaches AMX tiles (the amx level), else the own kernel."""
    outs = {}
    for choice in ("own", "brgemm", "auto"):
        path = tmp_path / f"{choice}.pt"
        env = {k: v for k, v in os.environ.items() if k != "ESR_CPU_GEMM"}
        r = subprocess.run([sys.executable, "-c", _BRGEMM_PROCESS, str(path)], capture_output=True, text=True,
                           timeout=300, env={**env, "ESR_CPU_GEMM": choice} if choice != "auto" else env)
        assert r.returncode == 0, r.stderr[-2000:]
        amx = "AMX 1" in r.stdout
        kind = {"own": 0, "brgemm": 1, "auto": int(amx)}[choice]
        assert f"KIND {kind} {('own', 'brgemm')[kind]}" in r.stdout  # as `esr backends` reports it
        outs[choice] = torch.load(path)
    # Two bf16 steps of the output's [0, 1] scale: on AMX tiles the 3x3 convs run direct, not
    # Winograd (each within bf16's own error: test_fused_models_in_low_precision).
    assert err(outs["brgemm"], outs["own"]) <= 2e-2
    assert torch.equal(outs["auto"], outs["brgemm" if amx else "own"])


@needs_bf16
@pytest.mark.shared
def test_bf16_on_an_amx_cpu_says_it_measured_slower_than_float32(monkeypatch, gemm_kind):
    """Issue 29, item 4: on a CPU whose level is amx, the own bf16 GEMM was measured slower than
    float32 (Xeon, README): loading a bf16 model there says so, with the way to AMX tiles; with
    brgemm chosen, or below amx, no such note (the level is imitated: the CPU here may lack it)."""
    import esr_models
    import esr_kernels.policy as P

    real = P.cpu_isa()
    monkeypatch.setattr(P, "cpu_isa", lambda: {**real, "cpu": "amx", "requested": None})
    for kind, noted in ((0, True), (1, False)):
        gemm_kind(kind)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            esr_models.load("pfdnlite", dtype=torch.bfloat16, fused=True, backend="cpu")
        said = [str(w.message) for w in caught if "measured slower than float32" in str(w.message)]
        assert bool(said) == noted, kind
        if noted:
            assert "ESR_CPU_GEMM=brgemm" in said[0] and "IFADNet 114 vs 86 ms" in said[0]
    monkeypatch.setattr(P, "cpu_isa", lambda: {**real, "cpu": "amx", "requested": "avx512_bf16"})
    gemm_kind(0)
    assert not P.bf16_slower_than_float32() and "measured slower" not in P.cpu_dtype_note(torch.bfloat16)
