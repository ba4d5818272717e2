"""esr_kernels.roofline (and ``esr roofline``'s report, esr_models.cli.roofline): the traffic of one
launch by hand, the models' totals, fused < eager, and the fused launch list against the Triton
launches gpu_check records."""
from __future__ import annotations

import json
import os

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
    dev = roofline.DEVICES["H100 SXM"]
    assert roofline.modelled_seconds(launches, dev) == max(l.bytes / dev["bandwidth"],
                                                           2 * l.macs / dev["fp16_flops"])


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
    (rep,) = build_report(models=(name,))["models"]
    f, e = rep["fused"], rep["eager"]
    assert rep["output"] == [1, 3, 2160, 3840]
    for side in (f, e):
        assert side["launches"] > 0 and side["read_bytes"] > 0 and side["written_bytes"] > 0 and side["macs"] > 0
        assert all(ms > 0 for ms in side["modelled_ms"].values())
    assert f["bytes"] < e["bytes"] and f["launches"] < e["launches"]
    assert rep["traffic_ratio"] == f["bytes"] / e["bytes"]
    # The fused model writes the 4x output once, float16: at least 3 * 2160 * 3840 * 2 bytes.
    assert f["written_bytes"] >= 3 * 2160 * 3840 * 2


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
    kernel_of = {"esr::conv": "_conv_kernel", "esr::bsb": "_bsb_kernel", "esr::la_reduce": "_la_reduce_kernel",
                 "esr::esa/down": "_esa_down_kernel", "esr::esa/low": "_esa_low_kernel",
                 "esr::esa/out": "_esa_out_kernel"}
    assert [kernel_of[n] for n in ours] == [l.kernel for l in triton]


@pytest.mark.shared
def test_report_from_a_process_that_compiles_triton_goes_through_a_subprocess(monkeypatch):
    """As on a GPU machine (triton imported without the interpreter): the same report, traced
    in a subprocess under TRITON_INTERPRET=1."""
    import triton  # noqa: F401  imported, as a GPU test session has

    direct = build_report(models=("pfdnlite",), size=(60, 80))
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    via_subprocess = build_report(models=("pfdnlite",), size=(60, 80))
    assert via_subprocess == json.loads(json.dumps(direct))
