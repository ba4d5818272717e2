"""``esr selftest``: the quick CPU run end to end (subprocess, JSON report), its usage errors,
and the op-check machinery on Triton's interpreter (torch.ops.esr calls against
esr_kernels.reference)."""
from __future__ import annotations

import json
import math

import pytest
import torch

import esr_models

pytestmark = pytest.mark.shared


def test_selftest_cpu_quick_passes_with_a_complete_report(run_esr, tmp_path):
    report = tmp_path / "r.json"
    proc = run_esr("selftest", "--device", "cpu", "--quick", "--json", report, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "selftest: PASS" in proc.stdout
    data = json.loads(report.read_text())
    assert data["verdict"] == "PASS" and data["device"] == "cpu"
    assert data["versions"]["torch"] == torch.__version__
    assert data["input"]["source"] == "esr_models/data/sample.png"
    checks = data["checks"]
    from esr_kernels.policy import runs

    dtypes = [str(d).removeprefix("torch.") for d in runs("cpu")[1]]  # float32, bfloat16, float16
    assert {(c["kind"], c.get("model"), c["backend"], c.get("dtype")) for c in checks} == {
        ("available", None, "cpu", None),
        *(("model", n, "cpu", d) for n in esr_models.MODEL_NAMES for d in dtypes)}
    for c in checks:
        assert c["passed"] is True, c
        assert isinstance(c["error"], float) and math.isfinite(c["error"]), c
        assert isinstance(c["tolerance"], float) and c["error"] <= c["tolerance"], c
    for c in checks:
        if c["kind"] == "model" and c["dtype"] == "float32":
            assert c["tolerance"] == 1e-5 and c["metric"] == "max_abs" and c["shape"] == [1, 3, 96, 128]
        elif c["kind"] == "model":  # the relative rule: twice the reference's own error in that dtype
            assert c["tolerance"] == 2 * c["reference_error"] > 0 and c["shape"] == [1, 3, 96, 128]
    rows = data["timings"]["rows"]
    assert [r["model"] for r in rows] == list(esr_models.MODEL_NAMES)
    assert all(r["eager_ms"] > 0 and r["cpu_ms"] > 0 for r in rows)


def test_selftest_cuda_without_cuda_is_a_usage_error(run_esr, tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides any GPU, so this runs on GPU machines too.
    proc = run_esr("selftest", "--device", "cuda", "--quick", cwd=tmp_path, env={"CUDA_VISIBLE_DEVICES": ""},
                   timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--device cuda" in lines[0] and "CUDA is not available" in lines[0]
    assert not list(tmp_path.iterdir())  # no report written


def test_selftest_never_overwrites_a_report(run_esr, tmp_path):
    report = tmp_path / "r.json"
    report.write_text("mine")
    proc = run_esr("selftest", "--device", "cpu", "--quick", "--json", report, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "exists" in proc.stderr
    assert report.read_text() == "mine"


@pytest.mark.triton
def test_op_checks_compare_each_esr_call_with_the_reference(device):
    """The selftest's op checker on a module calling two esr:: ops (Triton; interpreter on CPU):
    one check per variant, each error measured against esr_kernels.reference and in tolerance."""
    import esr_kernels.ops  # noqa: F401  registers torch.ops.esr
    from esr_kernels import reference as R
    from esr_models.cli.selftest_checks import REL_TOL, op_checks

    class TwoOps(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = R.pack_conv_weight(torch.randn(16, 24, 1, 1, device=device) / 5)
            self.b = torch.randn(16, device=device)
            self.backend = "triton"

        def forward(self, x):
            y = torch.ops.esr.la_reduce(x, self.w, self.b)
            return torch.ops.esr.la_reduce(x[:, :, 1:, 2:], self.w, self.b), y

    x = torch.randn(1, 24, 11, 13, device=device)
    checks = op_checks("toy", TwoOps(), x, torch.float32, "triton")
    assert [c["op"] for c in checks] == ["la_reduce", "la_reduce"]
    assert sorted(c["variant"] for c in checks) == ["la_reduce[24]nchw", "la_reduce[24]strided"]
    for c in checks:
        assert c["passed"] and c["tolerance"] == REL_TOL[torch.float32] and 0 <= c["error"] <= c["tolerance"]


@pytest.mark.triton
def test_op_checks_know_every_op_the_models_call(device):
    """IFADNet's fusion (esr::concat_conv, a list of features) and PFDNLite's stored gate
    (esr::gate, under the v2 conv) are checked like the others; before, the checker had no
    reference for concat_conv and the forward failed, so a GPU selftest of IFADNet could not pass."""
    import esr_kernels.ops  # noqa: F401  registers torch.ops.esr
    from esr_kernels import reference as R
    from esr_kernels.spec import ACT_GELU, RES_TENSOR
    from esr_models.cli.selftest_checks import op_checks

    g = torch.Generator(device=device).manual_seed(0)

    class FuseAndGate(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = R.pack_conv_weight(torch.randn(8, 24, 1, 1, device=device, generator=g) / 5)
            self.b = torch.randn(self.w.shape[-1], device=device, generator=g)

        def forward(self, x):
            feats = [x[:, :8], x[:, 8:16], x[:, 16:]]
            y = torch.ops.esr.concat_conv(feats, self.w, self.b, 8, ACT_GELU, RES_TENSOR, x[:, :8].contiguous())
            return torch.ops.esr.gate(y, torch.rand(1, 8, 3, 4, device=device, generator=g))

    x = torch.randn(1, 24, 11, 13, device=device, generator=g)
    checks = op_checks("toy", FuseAndGate(), x, torch.float32, "triton")
    assert sorted(c["op"] for c in checks) == ["concat_conv", "gate"], checks
    for c in checks:
        assert c["passed"] and 0 <= c["error"] <= c["tolerance"], c
