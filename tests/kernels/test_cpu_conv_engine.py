"""The conv engine of the CPU backend (csrc/cpu/winograd.cpp, conv1x1.cpp, bsb_fused.cpp; at
the avx2 and avx512 ISA levels) and its buffer cache, against float64 F.conv2d. At the level
that runs here; tests/kernels/test_cpu_isa.py runs this file again at each lower level, forced."""
from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F

from esr_kernels.packing import pack_gemm_1x1, pack_winograd_3x3, pad_vector, round_up16
from esr_kernels.spec import LEAKY_SLOPE

pytestmark = pytest.mark.native_cpu  # skipped unless the extension is built (conftest)
FP32_TOL = 1e-5
ACTS = {0: lambda t: t, 1: F.gelu, 2: F.silu, 3: lambda t: F.leaky_relu(t, LEAKY_SLOPE), 4: torch.sigmoid}


@pytest.fixture(scope="module")
def native():
    import esr_kernels._C_cpu  # noqa: F401
    import esr_kernels.native  # noqa: F401

    ops = torch.ops.esr_native
    if not ops.conv_engine_available():
        pytest.skip("no conv engine at the ISA level that runs (it needs AVX2): the backend uses "
                    "oneDNN's convs")
    return ops


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


def plain(c_out, add=None, add_mode=1):
    """The conv engine's epilogue arguments for act(conv + bias) [+ add] (add_mode 1), or SPAN's
    attention with add (3)."""
    return (None, c_out, add, 0 if add is None else add_mode, None, None, 0, 0)


def reference(x, w, b, act, add, add_mode, padding):
    y = ACTS[act](F.conv2d(x.double(), w.double(), b.double(), padding=padding))
    if add_mode == 1:
        y = y + add.double()
    elif add_mode == 3:  # RES_SPAN_ATT
        y = (y + add.double()) * (torch.sigmoid(y) - 0.5)
    return y


# (C_in, C_out, H, W): the models' widths (48, 36, 28, 26, 24, 16, 3), channel tails, odd sizes, 1x1.
SHAPES = [(48, 48, 61, 67), (36, 36, 47, 59), (36, 48, 9, 5), (3, 48, 8, 11), (16, 48, 1, 1),
          (24, 24, 2, 3), (48, 24, 17, 1), (46, 46, 7, 7), (28, 28, 47, 59), (26, 26, 13, 17)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("act,add_mode", [(0, 0), (3, 1), (1, 0), (2, 1), (4, 0), (0, 3), (1, 3)])
def test_winograd_3x3_matches_conv2d(native, shape, act, add_mode):
    ci, co, h, w_ = shape
    torch.manual_seed(ci * 1000 + h)
    x = cl(torch.randn(2, ci, h, w_))
    w, b = torch.randn(co, ci, 3, 3) / (3 * ci ** 0.5), torch.randn(co)
    add = cl(torch.randn(2, co, h, w_)) if add_mode else None
    out = native.conv3x3_winograd(x, pack_winograd_3x3(w), pad_vector(b, round_up16(co), w), co, act,
                                  *plain(co, add, add_mode))
    assert out.shape == (2, co, h, w_) and out.is_contiguous(memory_format=torch.channels_last)
    assert (out.double() - reference(x, w, b, act, add, add_mode, 1)).abs().max() <= FP32_TOL


def test_winograd_reads_channel_slices_and_nchw(native):
    x = cl(torch.randn(1, 48, 13, 10))
    w, b = torch.randn(24, 24, 3, 3) / 15, torch.randn(24)
    u, bp = pack_winograd_3x3(w), pad_vector(b, 32, w)
    for inp in (x[:, :24], x[:, 24:], x[:, :24].contiguous()):  # slices read in place; NCHW converted
        ref = F.conv2d(inp.double(), w.double(), b.double(), padding=1)
        assert (native.conv3x3_winograd(inp, u, bp, 24, 0, *plain(24)).double() - ref).abs().max() <= FP32_TOL


def test_engine_ops_take_noncontiguous_inputs(native):
    """A pixel-strided view (a crop of a wider channels_last image) and a channels_last input
    whose channel count is no multiple of 16, into all three engine ops, batch 2."""
    from esr_kernels.packing import pack_bsb_cpu

    torch.manual_seed(7)
    wide = cl(torch.randn(2, 20, 13, 31))
    x = wide[..., 3:26]  # non-contiguous in every memory format
    assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    w3, w1, b = torch.randn(20, 20, 3, 3) / 13, torch.randn(20, 20, 1, 1) / 4, torch.randn(20)
    bp = pad_vector(b, 32, b)
    xd = x.double()
    out = native.conv3x3_winograd(x, pack_winograd_3x3(w3), bp, 20, 0, *plain(20))
    assert (out.double() - F.conv2d(xd, w3.double(), b.double(), padding=1)).abs().max() <= FP32_TOL
    out = native.conv1x1([x, x], pack_gemm_1x1(torch.cat([w1, w1], 1)), bp, 20, 0, *plain(20))
    assert (out.double() - F.conv2d(xd, 2 * w1.double(), b.double())).abs().max() <= FP32_TOL
    dw = torch.randn(20, 1, 3, 3) / 3
    p = pack_bsb_cpu(w1, dw, b)
    out = native.bsb_packed(x, p["pw"], p["taps"], p["bias"], None)
    ref = F.gelu(F.conv2d(F.pad(F.conv2d(xd, w1.double()), (1, 1, 1, 1), mode="reflect"), dw.double(), b.double(),
                          groups=20))
    assert (out.double() - ref).abs().max() <= FP32_TOL


@pytest.mark.parametrize("widths,co", [([48], 48), ([36, 36, 36, 36, 36, 36], 36), ([48], 16), ([16], 48),
                                       ([3], 5), ([28], 28), ([26, 26], 26)])
@pytest.mark.parametrize("hw", [(47, 59), (1, 1), (3, 5)], ids=["odd", "minimum", "tail"])
@pytest.mark.parametrize("act,add_mode", [(0, 0), (1, 1), (4, 0), (0, 3)])
def test_conv1x1_over_virtual_concatenation(native, widths, co, hw, act, add_mode):
    torch.manual_seed(len(widths) + co)
    xs = [cl(torch.randn(2, c, *hw)) for c in widths]
    w, b = torch.randn(co, sum(widths), 1, 1) / sum(widths) ** 0.5, torch.randn(co)
    add = cl(torch.randn(2, co, *hw)) if add_mode else None
    out = native.conv1x1(xs, pack_gemm_1x1(w), pad_vector(b, round_up16(co), w), co, act, *plain(co, add, add_mode))
    ref = reference(torch.cat(xs, 1), w, b, act, add, add_mode, 0)
    assert out.shape == ref.shape and (out.double() - ref).abs().max() <= FP32_TOL


@pytest.mark.parametrize("case", ["partial", "gated_residual", "span_att", "repeat_shuffle", "vector_shuffle"])
@pytest.mark.parametrize("ksize", [3, 1])
def test_conv_engine_fused_epilogues(native, case, ksize):
    """The epilogues that the models use, fused into both engine convs, against conv2d + the
    reference epilogue in float64 (odd size, batch 2)."""
    from esr_kernels import reference as R

    n, h, w_ = 2, 9, 11
    torch.manual_seed(ksize)
    c_conv = 24 if case == "partial" else 48
    x = cl(torch.randn(n, 48, h, w_))
    conv_in = x[:, :24] if case == "partial" else x
    wt, b = torch.randn(c_conv, conv_in.shape[1], ksize, ksize) / 20, torch.randn(c_conv)
    y = F.conv2d(conv_in.double(), wt.double(), b.double(), padding=ksize // 2)
    att = torch.rand(n, 48, 2, 3)
    if case == "partial":
        epi, act = (x, 48, None, 0, None, None, 0, 0), 2
        ref = torch.cat([F.silu(y), x[:, 24:].double()], 1)
    elif case == "gated_residual":
        epi, act = (None, 48, x, 2, att, None, 0, 0), 2
        ref = F.silu(y) + R.gate(x.double(), att.double())
    elif case == "span_att":  # RES_SPAN_ATT after an activation (SPAN's has none: the mode applies it first)
        epi, act = (None, 48, x, 3, None, None, 0, 0), 2
        ref = (F.silu(y) + x.double()) * (torch.sigmoid(F.silu(y)) - 0.5)
    elif case == "repeat_shuffle":
        img = torch.rand(n, 3, h, w_)
        epi, act = (None, 48, None, 0, None, img, 1, 4), 0
        ref = F.pixel_shuffle(y + torch.repeat_interleave(img.double(), 16, 1), 4)
    else:
        vec = torch.rand(3)
        epi, act = (None, 48, None, 0, None, vec, 2, 4), 0
        ref = F.pixel_shuffle(y, 4) + vec.double().view(1, 3, 1, 1)
    bp = pad_vector(b, round_up16(c_conv), b)
    if ksize == 3:
        out = native.conv3x3_winograd(conv_in, pack_winograd_3x3(wt), bp, c_conv, act, *epi)
    else:
        out = native.conv1x1([conv_in], pack_gemm_1x1(wt), bp, c_conv, act, *epi)
    assert out.shape == ref.shape and (out.double() - ref).abs().max() <= FP32_TOL


def test_conv_engine_opcheck(native):
    x = cl(torch.randn(2, 16, 5, 7))
    w3, w1, b = torch.randn(24, 16, 3, 3), torch.randn(24, 16, 1, 1), pad_vector(torch.randn(24), 32, x)
    torch.library.opcheck(native.conv3x3_winograd.default, (x, pack_winograd_3x3(w3), b, 24, 3, *plain(24)))
    torch.library.opcheck(native.conv1x1.default, ([x, x], pack_gemm_1x1(torch.cat([w1, w1], 1)), b, 24, 1,
                                                   *plain(24, cl(torch.randn(2, 24, 5, 7)))))
    img = torch.rand(2, 3, 5, 7)
    w48 = torch.randn(48, 16, 3, 3)
    torch.library.opcheck(native.conv3x3_winograd.default,
                          (x, pack_winograd_3x3(w48), torch.zeros(48), 48, 0, None, 48, None, 0, None, img, 1, 4))
    torch.library.opcheck(native.conv3x3_winograd.default,
                          (x, pack_winograd_3x3(w3), b, 24, 0, *plain(24, cl(torch.randn(2, 24, 5, 7)), 3)))


def test_conv_engine_rejects_mismatched_weights(native):
    x = cl(torch.randn(1, 16, 4, 4))
    with pytest.raises(RuntimeError, match="input channels"):
        native.conv3x3_winograd(x, pack_winograd_3x3(torch.randn(16, 8, 3, 3)), torch.zeros(16), 16, 0, *plain(16))
    with pytest.raises(RuntimeError, match="w must be"):
        native.conv1x1([x], pack_gemm_1x1(torch.randn(16, 8, 1, 1)), torch.zeros(16), 16, 0, *plain(16))
    with pytest.raises(RuntimeError, match="residual must be"):
        native.conv1x1([x], pack_gemm_1x1(torch.randn(16, 16, 1, 1)), torch.zeros(16), 16, 0,
                       *plain(16, torch.randn(1, 16, 4, 5)))


def test_span_attention_refuses_partial_output_and_shuffle(native):
    """RES_SPAN_ATT (SPAN's attention) runs on full convs only: a partial conv or a pixel
    shuffle with it is a clear error, in every op that takes the epilogue."""
    x, w = cl(torch.randn(1, 16, 4, 4)), torch.randn(16, 16, 3, 3)
    res, img = torch.randn(1, 16, 4, 4), torch.rand(1, 1, 4, 4)
    with pytest.raises(RuntimeError, match="RES_SPAN_ATT supports neither"):
        native.conv3x3_winograd(x[:, :8], pack_winograd_3x3(w[:8, :8]), torch.zeros(16), 8, 0, x, 16, res, 3, None,
                                None, 0, 0)
    with pytest.raises(RuntimeError, match="RES_SPAN_ATT supports neither"):
        native.conv1x1([x], pack_gemm_1x1(w[:, :, :1, :1]), torch.zeros(16), 16, 0, None, 16, res, 3, None, img, 1, 4)
    with pytest.raises(RuntimeError, match="RES_SPAN_ATT supports neither"):
        native.conv_epilogue(x, None, 16, 0, res, 3, None, img, 1, 4)


def test_buffer_cache_reuses_freed_outputs_and_empties(native):
    x = cl(torch.randn(1, 16, 64, 64))
    w, b = pack_gemm_1x1(torch.randn(16, 16, 1, 1)), torch.zeros(16)
    ptr = native.conv1x1([x], w, b, 16, 0, *plain(16)).data_ptr()  # freed at once: back to the cache
    again = native.conv1x1([x], w, b, 16, 0, *plain(16))
    assert again.data_ptr() == ptr
    held = native.conv1x1([x], w, b, 16, 0, *plain(16))  # while `again` lives, a different block
    assert held.data_ptr() != again.data_ptr() and torch.equal(held, again)
    del again, held
    import esr_kernels

    assert esr_kernels.empty_cache() >= 2 * 16 * 64 * 64 * 4
    assert native.empty_cache() == 0


@pytest.mark.parametrize("c", [36, 48, 24, 5])
@pytest.mark.parametrize("hw", [(2, 2), (47, 59), (3, 17)], ids=["minimum", "odd", "thin"])
@pytest.mark.parametrize("with_residual", [False, True])
def test_bsb_packed_is_pointwise_reflect_depthwise_gelu(native, c, hw, with_residual):
    from esr_kernels.packing import pack_bsb_cpu

    torch.manual_seed(c + hw[0])
    x = cl(torch.randn(2, c, *hw))
    pw, dw, b = torch.randn(c, c, 1, 1) / c ** 0.5, torch.randn(c, 1, 3, 3) / 3, torch.randn(c)
    res = cl(torch.randn(2, c, *hw)) if with_residual else None
    p = pack_bsb_cpu(pw, dw, b)
    out = native.bsb_packed(x, p["pw"], p["taps"], p["bias"], res)
    ref = F.gelu(F.conv2d(F.pad(F.conv2d(x.double(), pw.double()), (1, 1, 1, 1), mode="reflect"), dw.double(),
                          b.double(), groups=c))
    if res is not None:
        ref = ref + res.double()
    assert out.shape == ref.shape and (out.double() - ref).abs().max() <= FP32_TOL
    torch.library.opcheck(native.bsb_packed.default, (x, p["pw"], p["taps"], p["bias"], res))


def test_bsb_packed_rejects_too_small_and_mismatched(native):
    from esr_kernels.packing import pack_bsb_cpu

    p = pack_bsb_cpu(torch.randn(8, 8, 1, 1), torch.randn(8, 1, 3, 3), torch.randn(8))
    with pytest.raises(RuntimeError, match="reflect padding needs"):
        native.bsb_packed(torch.randn(1, 8, 1, 5), p["pw"], p["taps"], p["bias"], None)
    with pytest.raises(RuntimeError, match="do not match"):
        native.bsb_packed(torch.randn(1, 16, 4, 4), p["pw"], p["taps"], p["bias"], None)


def test_buffer_cache_evicts_least_recently_freed_over_its_limit(native):
    """Blocks of sizes no longer asked for must not hold the budget (ESR_CPU_CACHE_MB=1 here)."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import torch
        from esr_kernels.extensions import native_ops
        ops = native_ops("_C_cpu")  # loaded with its settings: the limit from ESR_CPU_CACHE_MB
        a = ops.conv1x1([torch.randn(1, 16, 64, 128)], torch.zeros(16, 16), torch.zeros(16), 16, 0,
                        None, 16, None, 0, None, None, 0, 0)   # 512 KB
        del a                                                  # cached: 512 KB
        b = ops.conv1x1([torch.randn(1, 16, 64, 128)], torch.zeros(16, 32), torch.zeros(32), 24, 0,
                        None, 24, None, 0, None, None, 0, 0)   # 768 KB
        del b                                                  # 1280 KB > 1 MB: the 512 KB block goes
        print(ops.empty_cache())
    """)
    env = {**__import__("os").environ, "ESR_CPU_CACHE_MB": "1"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip().splitlines()[-1]) == 24 * 64 * 128 * 4
