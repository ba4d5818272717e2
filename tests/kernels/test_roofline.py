"""esr_kernels.roofline (and ``esr roofline``'s report, esr_models.cli.roofline): the traffic and
executed work of one launch by hand, the models' totals, fused < eager, the fused launch list
against the Triton launches gpu_check records, the executed/useful MACs against issue 28's reading
of the kernels, and the modelled float32 H200 times against the times measured there on
2026-11-28 (benchmarks/results/gpu-session-h200-2026-11-28*.json)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

import esr_models
from esr_kernels import reference as R
from esr_kernels import roofline
from esr_models.cli.roofline import build_report
from esr_kernels.spec import ACT_NONE, RES_NONE, SHORTCUT_NONE

pytestmark = pytest.mark.triton  # the fused models' esr:: ops (fake implementations only)
# Tracing esr:: ops on CPU tensors in this process needs Triton's interpreter (a GPU machine's test
# process compiles Triton instead; build_report then traces in a subprocess, tested below).
needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="traces esr:: ops on CPU tensors in-process: Triton's interpreter")


class OneConv(torch.nn.Module):
    """One esr::conv: 3 -> 8 channels, 3x3, stride 1, float16 weights, float32 bias."""

    def __init__(self):
        super().__init__()
        import esr_kernels.ops  # noqa: F401  registers torch.ops.esr

        self.w = R.pack_conv_weight(torch.randn(8, 3, 3, 3)).half()  # (9, 3, 16)
        self.b = torch.zeros(16)

    def forward(self, x):
        return torch.ops.esr.conv(x, self.w, self.b, 8, 8, 3, 1, 1, ACT_NONE, None, RES_NONE, None, False,
                                  None, None, SHORTCUT_NONE, 0)


@needs_interpreter
def test_one_conv_launch_by_hand():
    launches = roofline.record(OneConv(), (1, 3, 10, 12), torch.float16)
    assert [l.name for l in launches] == ["esr::conv"]
    (l,) = launches
    # read: x 3*10*12 fp16 + packed weight 9*3*16 fp16 + bias 16 fp32; written: 8*10*12 fp16
    assert l.read == 3 * 10 * 12 * 2 + 9 * 3 * 16 * 2 + 16 * 4 == 1648
    assert l.written == 8 * 10 * 12 * 2 == 1920
    assert l.macs == 10 * 12 * 8 * 3 * 9  # every output pixel and channel, 3 inputs x 9 taps
    assert l.executed_macs == 0 and l.l2_bytes == l.bytes  # before attach_executed

    roofline.attach_executed(launches, roofline.record_executed(OneConv(), (1, 3, 10, 12), torch.float16))
    # sm_90's conv: 32 pixels per program, K blocks of 16, CO_PAD 16 (the packed width):
    # 4 programs x 32 pixels (the last 8 masked) x 9 taps x 16 (3 real) x 16 (8 real)
    assert l.programs == 4
    assert l.executed_macs == 4 * 32 * 9 * 16 * 16
    # Input footprint, 3 rows per run of output pixels, runs of a 12-wide image: program 0 has
    # pixels 0-31 (12, 12, 8), 1: 32-63 (4, 12, 12, 4), 2: 64-95 (8, 12, 12), 3: 96-119 (12, 12)
    run = lambda n: 3 * (n + 2)  # noqa: E731
    px = sum(run(n) for n in (12, 12, 8, 4, 12, 12, 4, 8, 12, 12, 12, 12))
    assert roofline.footprint_pixels(120, 12, 32, 3, 1) == px == 432
    weights = 9 * 3 * 16 * 2 + 16 * 4
    assert l.l2_read == px * 3 * 2 + 4 * weights  # the footprint, and the weights per program
    dev = roofline.DEVICES["H100 SXM"]
    expected = max(l.bytes / dev["bandwidth"], l.l2_bytes / dev["l2_bandwidth"],
                   2 * l.executed_macs / (dev["fp16_flops"] * roofline.ISSUE_EFFICIENCY["float16"]))
    assert roofline.modelled_seconds(launches, dev, "float16") == pytest.approx(expected + dev["launch_overhead_s"])
    assert roofline.bound_seconds(launches, dev, "float16") == max(l.bytes / dev["bandwidth"],
                                                                   2 * l.macs / dev["fp16_flops"])


def test_footprint_of_a_strided_window_and_of_one_row_blocks():
    # 1x1: each pixel once; 3x3 stride 1 over a row of 64 in blocks of 32: 3 rows x 34 each
    assert roofline.footprint_pixels(100, 10, 32, 1, 1) == 100
    assert roofline.footprint_pixels(64, 64, 32, 3, 1) == 2 * 3 * 34
    # 7x7 stride 3 (la_reduce's pool windows), one block of 4 pooled pixels: 7 rows x 16
    assert roofline.footprint_pixels(4, 4, 64, 7, 3) == 7 * (3 * 3 + 7)


def test_eager_conv_counts_inputs_outputs_and_macs():
    conv = torch.nn.Conv2d(3, 8, 3, padding=1).half()
    launches = roofline.record(conv, (1, 3, 10, 12), torch.float16)
    # (inference mode dispatches conv2d itself; convolution outside it)
    (l,) = [l for l in launches if l.name in ("aten::conv2d", "aten::convolution")]
    assert l.read == (3 * 10 * 12 + 8 * 3 * 9 + 8) * 2 and l.written == 8 * 10 * 12 * 2
    assert l.macs == 10 * 12 * 8 * 3 * 9


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_model_totals_positive_and_fused_below_eager(name):
    (rep,) = build_report(models=(name,), sass=False)["models"]
    f, e = rep["fused"], rep["eager"]
    assert rep["output"] == [1, 3, 2160, 3840]
    for side in (f, e):
        assert side["launches"] > 0 and side["read_bytes"] > 0 and side["written_bytes"] > 0 and side["macs"] > 0
        assert all(ms > 0 for ms in side["modelled_ms"].values())
    assert f["bytes"] < e["bytes"] and f["launches"] < e["launches"]
    assert rep["traffic_ratio"] == f["bytes"] / e["bytes"]
    # The fused model writes the 4x output once, float16: at least 3 * 2160 * 3840 * 2 bytes.
    assert f["written_bytes"] >= 3 * 2160 * 3840 * 2
    # Executed work and L2 requests only add to the useful work and the DRAM bytes; the
    # prediction is never below the bound.
    assert f["executed_macs"] > f["macs"] and f["l2_bytes"] > f["bytes"]
    # v1 (the default): every launch of the modelled GPU forward is a Triton kernel (no
    # concatenation, no input check, no metadata query counted)
    assert rep["launches_per_forward"] == f["launches"] == rep["kernel_launches"] > 0
    for dev in roofline.DEVICES:
        assert f["modelled_ms"][dev] > f["bound_ms"][dev]
    # Useful MACs are the reference network's: the eager model's convolutions, up to ESA's
    # folded 1x1 (C x C_r where the reference has C_r x C_r): within 1%.
    assert f["macs"] == pytest.approx(e["macs"], rel=0.01)


@needs_interpreter
@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_fused_launch_list_matches_the_recorded_triton_launches(name):
    """One roofline launch per Triton kernel launch (esr::esa: three), in order, as gpu_check
    records them from the real launchers."""
    from esr_kernels.gpu_check import record_launches

    model = esr_models.load(name, fused=True, backend="triton", dtype=torch.float16)
    ours = [l.name for l in roofline.record(model, (1, 3, 40, 48), torch.float16) if l.name.startswith("esr::")]
    triton = record_launches(model, torch.rand(1, 3, 40, 48).half(), arch=90)
    kernel_of = {"esr::conv": "_conv_kernel", "esr::concat_conv": "_concat_conv_kernel", "esr::bsb": "_bsb_kernel",
                 "esr::la_reduce": "_la_reduce_kernel",
                 "esr::esa/down": "_esa_down_kernel", "esr::esa/low": "_esa_low_kernel",
                 "esr::esa/out": "_esa_out_kernel"}
    assert [kernel_of[n] for n in ours] == [l.kernel for l in triton]


@needs_interpreter
@pytest.mark.shared
@pytest.mark.parametrize("name", ["ifadnet", "span"])
def test_the_modelled_gpu_forward_is_triton_launches_only(name):
    """What a GPU forward of IFADNet and SPAN launches under v1: Triton kernels and nothing else,
    neither the concatenation their fusion conv reads in place (esr::concat_conv) nor the input
    range check (CPU tensors only), which the roofline must not count."""
    model = esr_models.load(name, fused=True, backend="triton", dtype=torch.float16)
    names = [l.name for l in roofline.record(model, (1, 3, 40, 48), torch.float16)]
    assert "esr::concat_conv" in names
    assert not [n for n in names if not n.startswith("esr::")], names


@pytest.mark.shared
def test_report_from_a_process_that_compiles_triton_goes_through_a_subprocess(monkeypatch):
    """As on a GPU machine (triton imported without the interpreter): the same report, traced
    in a subprocess under TRITON_INTERPRET=1."""
    import triton  # noqa: F401  imported, as a GPU test session has

    direct = build_report(models=("pfdnlite",), size=(60, 80))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    via_subprocess = build_report(models=("pfdnlite",), size=(60, 80))
    assert via_subprocess == json.loads(json.dumps(direct))


# Issue 28 ("Why") read the kernels' executed and useful MACs per LR pixel from the code and SASS:
# derived here from the recorded launches, they must agree (within 1%).
ISSUE_28_MACS_PER_PIXEL = {"ifadnet": (567e3, 150e3), "pfdnlite": (317e3, 182e3), "rlfn": (426e3, 300e3),
                           # SPAN (C = 28 / 26), by hand. Useful: head 3C9, 18 block convs and body_tail
                           # 19 C^2 9, fuse 4C^2, tail 48 C 9. Executed by today's Triton kernels: C
                           # padded to 32 both ways, the head's 3 inputs to 16, the fuse's 4C = 112 / 104
                           # inputs to 112, the tail's 48 outputs to 64: 4608 + 19 * 9216 + 3584 + 18432.
                           "span": (201728, 150052), "spantiny": (201728, 130234)}
# Measured on the lent H200 (2026-11-28): the models the modelled time is checked against.
H200_MEASURED = ("ifadnet", "pfdnlite", "rlfn")


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_executed_and_useful_macs_are_what_the_kernels_run(name):
    (rep,) = build_report(models=(name,), dtype_name="float32", sass=False)["models"]
    executed, useful = ISSUE_28_MACS_PER_PIXEL[name]
    assert rep["executed_macs_per_pixel"] == pytest.approx(executed, rel=0.01)
    assert rep["useful_macs_per_pixel"] == pytest.approx(useful, rel=0.01)
    assert rep["fused"]["executed_over_useful"] == pytest.approx(executed / useful, rel=0.02)


RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
H200 = "H200 (measured)"


def measured_h200_ms(model: str, provider: str = "triton", dtype: str = "float32", hw=(540, 960)) -> float:
    """The median forward time measured on the lent H200 on 2026-11-28 (batch 1, no CUDA graph)."""
    rows = []
    for path in sorted(RESULTS.glob("gpu-session-h200-2026-11-28*.json")):
        for step in json.loads(path.read_text())["steps"]:
            rows += [r for r in (step.get("result") or {}).get("rows", []) if "ms" in r]
    (row,) = [r for r in rows if r["model"] == model and r["provider"] == provider and r["dtype"] == dtype
              and r["hw"] == list(hw) and r["batch"] == 1 and not r["graph"] and not r["channels_last"]]
    return row["ms"]


@pytest.mark.shared
@pytest.mark.parametrize("name", H200_MEASURED)
def test_float32_h200_time_predicts_the_measured_one(name):
    """Issue 28, item 6: the modelled fused Triton float32 time at 540x960 on the H200 within 15%
    of the time measured there on 2026-11-28, before the model is trusted for new kernels.
    Those float32 kernels ran IEEE float32 dots: modelled the same (``tf32=False``)."""
    (rep,) = build_report(models=(name,), dtype_name="float32", tf32=False)["models"]
    assert rep["issue_model"], "the sm_90 SASS could not be compiled here: the issue model did not run"
    modelled, measured = rep["fused"]["modelled_ms"][H200], measured_h200_ms(name)
    assert modelled == pytest.approx(measured, rel=0.15), \
        f"{name}: modelled {modelled:.2f} ms, measured {measured:.2f} ms"


@needs_interpreter
@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_sass_ffmas_agree_with_the_executed_macs(name):
    """The two counts check each other: the FFMAs the float32 kernels issue (SASS loop bodies x
    trip counts x 32 lanes x warps x programs) are the executed MACs, within 10% (the gate, GELU
    and bilinear arithmetic add a few FFMAs; nothing may be missing)."""
    model = esr_models.load(name, fused=True, backend="triton", dtype=torch.float32)
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):  # IEEE FFMAs
        recorded = roofline.record_executed(model, (1, 3, 540, 960), torch.float32)
    for k, prof in zip(recorded, roofline.sass_profiles(recorded)):
        assert prof is not None
        ffma = roofline.issued_per_warp(k, prof)[1] * 32 * k.num_warps * k.grid[0] * k.grid[1]
        executed = roofline.executed_work(k)[0]
        assert 0.98 * executed <= ffma <= 1.1 * executed, (k.kernel, k.constexprs, ffma / executed)


# ---------------------------------------------------------------- v2, the tensor-core conv (issue 28, item 2)
def _rlfn_48_to_48(conv: str, dtype, arch: int):
    """The recorded launch of RLFN's first 48 -> 48 3x3 conv (channels_last, 64x64) under ``conv``."""
    from esr_kernels.gpu_check import make_input, record_launches
    from esr_kernels.triton.configs import conv_kernel

    model = esr_models.load("rlfn", fused=True, backend="triton", dtype=dtype)
    with conv_kernel(conv):
        launches = record_launches(model, make_input(str(dtype).split(".")[-1], "channels_last", (64, 64), 1), arch)
    convs = [k for k in launches if "conv" in k.kernel and k.constexprs["KSIZE"] == 3
             and k.tensors["x_ptr"].shape[1] == 48 and k.scalars["C_out"] == 48]
    return convs[0]


@needs_interpreter
@pytest.mark.shared
@pytest.mark.parametrize("dtype,arch", [(torch.float16, 80), (torch.float16, 90), (torch.float32, 90)],
                         ids=["float16-sm80", "float16-sm90", "float32-sm90"])
def test_v2_conv_multiplies_on_the_tensor_cores(dtype, arch):
    """From the SASS compiled here (no GPU): v2's dots are tensor-core MMAs (HGMMA, the
    warpgroup MMA, on sm_90; HMMA before), in float16 and in float32 under PyTorch's default
    flags (TF32), and no FFMA does a multiply of the K loop. (TF32 before sm_90 stays on v1:
    v2's float32 tiles spilled there.)"""
    k = _rlfn_48_to_48("v2", dtype, arch)
    assert k.kernel == "_conv_tc_kernel"
    assert _rlfn_48_to_48("v2", torch.float32, 80).kernel == "_conv_kernel"
    (prof,) = roofline.sass_profiles([k], arch=arch)
    assert prof is not None, "could not compile for the GPU here"
    assert prof["mma"] > 0
    assert all(loop[3] == 0 for loop in prof["loops"]), prof["loops"]  # FFMAs in the K loop


@needs_interpreter
@pytest.mark.shared
def test_v2_conv_issues_fewer_instructions_per_pixel_than_v1():
    """sm_90 float16 channels_last, RLFN's 48 -> 48 3x3 at 64x64: the warp-instructions per
    output pixel (SASS loop bodies x trip counts) of v2 are well below v1's (read here with
    Triton 3.9: v1 173, v2 78 (99 before the interior tiles' unmasked path); issue 28 asks for
    40, not reached yet: see the README)."""
    per_pixel = {}
    for conv in ("v1", "v2"):
        k = _rlfn_48_to_48(conv, torch.float16, 90)
        (prof,) = roofline.sass_profiles([k], arch=90)
        assert prof is not None
        per_pixel[conv] = roofline.issued_per_warp(k, prof)[0] * k.num_warps * k.grid[0] * k.grid[1] / (64 * 64)
    assert per_pixel["v2"] < 0.65 * per_pixel["v1"], per_pixel


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_v2_executes_at_most_1_8x_the_useful_macs(name, monkeypatch):
    """Issue 28, item 3 (Triton's bar): with the v2 kernels (ESR_TRITON_CONV=v2: no 64-channel
    padding, BSB's 1x1 once) the executed MACs are at most 1.8x the useful ones, every model
    (v1: IFADNet 3.76). la_reduce's and esa_down's recomputed 1x1s are what is left above 1."""
    monkeypatch.setenv("ESR_TRITON_CONV", "v2")
    (rep,) = build_report(models=(name,), dtype_name="float16", sass=False)["models"]
    assert rep["fused"]["executed_over_useful"] <= 1.8, rep["fused"]["executed_over_useful"]


@needs_interpreter
@pytest.mark.shared
def test_v2_esa_pools_once_and_issues_fewer_instructions_than_v1():
    """Issue 28, items 3 and 4: v2's ESA (esa_tc.py) against v1's, RLFN float16 channels_last
    at 120 x 160, sm_90 SASS, warp-instructions per full-resolution pixel (at 540 x 960, read
    here with Triton 3.9: down 59 -> 14, low 91 -> 6, out 120 -> 48). low pools each pooled
    pixel once instead of at each of 9 taps: at most a quarter of v1's; down and out (128-pixel
    tiles, 46 channels as 32 + 16, vector loads): at most half. All three multiply on the
    tensor cores; low's executed MACs are its tile's 9 taps (the ring of one included)."""
    from esr_kernels.gpu_check import make_input, record_launches
    from esr_kernels.triton.configs import conv_kernel

    model = esr_models.load("rlfn", fused=True, backend="triton", dtype=torch.float16)
    per_pixel = {}
    for conv in ("v1", "v2"):
        with conv_kernel(conv):
            launches = record_launches(model, make_input("float16", "channels_last", (120, 160), 1), 90)
        esa = [k for k in launches if k.kernel.startswith("_esa_")][:3]  # the first block's ESA
        assert [k.kernel for k in esa] == [f"_esa_{p}{'_tc' if conv == 'v2' else ''}_kernel"
                                           for p in ("down", "low", "out")]
        profs = roofline.sass_profiles(esa, arch=90)
        assert all(p is not None and p["mma"] > 0 for p in profs)
        per_pixel[conv] = [roofline.issued_per_warp(k, p)[0] * k.num_warps * k.grid[0] * k.grid[1] / (120 * 160)
                           for k, p in zip(esa, profs)]
        if conv == "v2":
            low = esa[1]
            assert roofline.executed_work(low)[0] == low.grid[0] * 8 * 16 * 9 * 16 * 16
    (down1, low1, out1), (down2, low2, out2) = per_pixel["v1"], per_pixel["v2"]
    assert low2 <= low1 / 4 and down2 <= down1 / 2 and out2 <= out1 / 2, per_pixel


@needs_interpreter
@pytest.mark.shared
def test_v2_la_reduce_computes_its_1x1_about_once():
    """Issue 28, item 3: PFDNLite's LocalAttention reduction under v2 (la_reduce.py's v2 kernel)
    computes the 1x1 once per input pixel of a 4 x 4 pooled tile (16 x 16: 1.8x the 9 input
    pixels a pooled one owns) instead of at all 49 window positions (5.4x), and issues at most
    half of v1's warp-instructions per pixel (float16 channels_last 120 x 160, sm_90; at 540 x
    960, read here with Triton 3.9: 47.1 -> 19.3)."""
    from esr_kernels.gpu_check import make_input, record_launches
    from esr_kernels.triton.configs import conv_kernel

    model = esr_models.load("pfdnlite", fused=True, backend="triton", dtype=torch.float16)
    per_pixel, ratio = {}, {}
    for conv in ("v1", "v2"):
        with conv_kernel(conv):
            launches = record_launches(model, make_input("float16", "channels_last", (120, 160), 1), 90)
        k = next(k for k in launches if k.kernel.startswith("_la_reduce"))
        assert k.kernel == ("_la_reduce_tc_kernel" if conv == "v2" else "_la_reduce_kernel")
        (prof,) = roofline.sass_profiles([k], arch=90)
        assert prof is not None and prof["mma"] > 0
        per_pixel[conv] = roofline.issued_per_warp(k, prof)[0] * k.num_warps * k.grid[0] * k.grid[1] / (120 * 160)
        c_in, cr = k.tensors["x_ptr"].shape[1], 16
        ratio[conv] = roofline.executed_work(k)[0] / (120 * 160 * c_in * cr)  # per input pixel's 1x1
    assert ratio["v1"] > 5 and ratio["v2"] < 2.2, ratio  # 48 channels as 32 + 16: no padding to 64
    assert per_pixel["v2"] <= per_pixel["v1"] / 2, per_pixel


@needs_interpreter
@pytest.mark.shared
def test_v2_interior_tiles_issue_fewer_instructions_than_edge_tiles():
    """v2 compiles two K loops and picks one per tile: the issue model compiles each alone
    (``roofline._path_variants``) and weighs them by the share of interior tiles. The interior
    one (no per-pixel masks) issues at most 3/4 of the edge one's instructions (sm_90 float16,
    RLFN's 48 -> 48 3x3; read here with Triton 3.9: 56.5 against 90.3 per output pixel), and
    the model's mean lies between the two by that share (64x64: 3/8 of the tiles inside)."""
    k = _rlfn_48_to_48("v2", torch.float16, 90)
    (prof,) = roofline.sass_profiles([k], arch=90)
    assert prof is not None and len(prof["paths"]) == 2
    edge, inside = (roofline._issued_one(k, p)[0] for p in prof["paths"])
    assert inside <= 0.75 * edge, (inside, edge)
    share = roofline._interior_share(k)
    assert share == pytest.approx(3 / 8)
    assert roofline.issued_per_warp(k, prof)[0] == round((1 - share) * edge + share * inside)


@pytest.mark.parametrize("h,w,ksize,stride,pad", [(64, 64, 3, 1, 1), (47, 59, 3, 1, 1), (19, 37, 3, 2, 1),
                                                  (540, 960, 3, 1, 1), (40, 40, 1, 1, 0), (7, 9, 3, 1, 1)])
def test_interior_fraction_counts_the_tiles_whose_taps_all_lie_inside(h, w, ksize, stride, pad):
    """``conv_tc.interior_fraction`` (the host's count of the kernel's ``_interior`` tiles)
    against its definition, tile by tile: every output pixel of the 8 x 16 tile inside the
    output and every tap of it inside the input."""
    from esr_kernels.triton.conv_tc import interior_fraction

    ho, wo = (h + 2 * pad - ksize) // stride + 1, (w + 2 * pad - ksize) // stride + 1
    th, tw = 8, 16
    tiles = [(ty, tx) for ty in range(-(-ho // th)) for tx in range(-(-wo // tw))]

    def inside(ty, tx):
        rows = [y * stride - pad + d for y in range(ty * th, ty * th + th) for d in range(ksize)]
        cols = [x * stride - pad + d for x in range(tx * tw, tx * tw + tw) for d in range(ksize)]
        return ((ty + 1) * th <= ho and (tx + 1) * tw <= wo and min(rows) >= 0 and max(rows) < h
                and min(cols) >= 0 and max(cols) < w)

    expected = sum(inside(*t) for t in tiles) / len(tiles)
    assert interior_fraction(h, w, ho, wo, th, tw, ksize, stride, pad) == pytest.approx(expected)
