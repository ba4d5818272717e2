"""``esr gpu-check`` on a fast subset: the recording API gives the GPU's launch parameters, a real
compile for two archs has no violation and parses its numbers, and an oversized configuration
is flagged (non-zero exit). The full run (3 models x 3 dtypes x 2 layouts x 4 archs) is CI's
own step: ``esr gpu-check --arch 80,86,89,90``."""
from __future__ import annotations

import math
import os

import pytest
import torch

pytestmark = [pytest.mark.triton, pytest.mark.shared]


@pytest.fixture(autouse=True)
def _interpreter(device):
    if device.type != "cpu" or os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("records launches under Triton's interpreter (CPU tensors)")


@pytest.fixture(scope="module")
def pfdnlite_launches():
    import esr_models
    from esr_kernels.gpu_check import make_input, record_launches

    model = esr_models.load("pfdnlite", fused=True, backend="triton")
    x = make_input("float32", "channels_last", (40, 40), 2)
    return {arch: record_launches(model, x, arch) for arch in (80, 90)}


def test_record_launches_gives_the_gpu_parameters(pfdnlite_launches):
    from esr_kernels.spec import RES_GATED_INPUT
    from esr_kernels.triton.common import DOT_TF32
    from esr_kernels.triton.configs import launch_config

    launches = pfdnlite_launches[90]
    kernels = {launch.kernel for launch in launches}
    assert {"_conv_kernel", "_la_reduce_kernel"} <= kernels
    for launch in launches:
        bp = launch.constexprs["BLOCK_P"]
        assert bp < 4096, "recorded the interpreter's pixel block, not the GPU's"
        x = next(iter(launch.tensors.values()))
        assert x.dtype == "float32" and launch.grid[1] == 2 and launch.num_warps >= 1
        assert launch.constexprs["PREC"] == DOT_TF32  # float32 under PyTorch's default flags
        if launch.kernel == "_conv_kernel":
            w = launch.tensors["w_ptr"]
            cfg = launch_config("conv", 90, torch.float32, c_in=w.shape[1],
                                ci_block=launch.constexprs["CI_BLOCK"], co_pad=w.shape[-1],
                                ksize=launch.constexprs["KSIZE"],
                                gate=bool(launch.constexprs["HAS_GATE"]
                                         or launch.constexprs["RES_MODE"] == RES_GATED_INPUT),
                                shuffle=launch.constexprs["SHUFFLE"])
            assert (bp, launch.num_warps, launch.num_stages) == (cfg.block_p, cfg.num_warps, cfg.num_stages)
            pixels = launch.scalars["H_out"] * launch.scalars["W_out"]
            assert launch.grid[0] == math.ceil(pixels / bp)


def test_recording_bf16_takes_the_tensor_core_dot():
    import esr_models
    from esr_kernels.triton.common import DOT_NATIVE
    from esr_kernels.gpu_check import make_input, record_launches

    model = esr_models.load("rlfn", fused=True, backend="triton", dtype=torch.bfloat16)
    launches = record_launches(model, make_input("bfloat16", "nchw", (32, 32), 1), 86)
    assert launches and all(launch.constexprs["PREC"] == DOT_NATIVE for launch in launches)


@pytest.mark.parametrize("api", ["legacy", "fp32_precision"])
def test_float32_dots_follow_pytorchs_tf32_flag(api):
    """Issue 28, item 1: float32 runs TF32 tensor-core dots when PyTorch lets convolutions use
    TF32 (its default, what eager and torch.compile run) and IEEE float32 when it does not,
    read at each launch (not at load), through either of PyTorch's flag APIs."""
    import esr_models
    from esr_kernels.gpu_check import make_input, record_launches
    from esr_kernels.triton.common import DOT_IEEE, DOT_TF32

    model = esr_models.load("rlfn", fused=True, backend="triton")
    x = make_input("float32", "nchw", (32, 32), 1)
    if api == "legacy":
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=False):
            ieee = record_launches(model, x, 90)
    else:
        conv = torch.backends.cudnn.conv
        saved, conv.fp32_precision = conv.fp32_precision, "ieee"
        try:
            ieee = record_launches(model, x, 90)
        finally:
            conv.fp32_precision = saved
    tf32 = record_launches(model, x, 90)
    assert ieee and {launch.constexprs["PREC"] for launch in ieee} == {DOT_IEEE}
    assert {launch.constexprs["PREC"] for launch in tf32} == {DOT_TF32}


def test_check_subset_has_no_violation(tmp_path):
    from esr_models.cli.gpu_check import run_check

    report = run_check(archs=(86, 90), models=("rlfn",), dtypes=("float16",), layouts=("channels_last",),
                       cache_dir=os.environ.get("ESR_GPU_CHECK_CACHE") or None)
    assert report["violations"] == 0, report
    for arch in ("86", "90"):
        rows = report["archs"][arch]["specialisations"]
        assert rows
        for r in rows:
            assert r["regs"] > 0 and r["shared"] >= 0 and r["stack"] == 0 and r["local"] == 0
            assert r["warps_per_sm"] >= r["num_warps"] and r["verdict"] == "ok"


def test_verdict_limits():
    from esr_kernels.gpu_check import occupancy, verdict

    fits = {"ok": True, "regs": 128, "shared": 120_000, "stack": 0, "local": 0, "local_stores": 0}
    assert verdict(fits, 90) == [] and verdict(fits, 80) == []
    assert any("shared memory" in v for v in verdict(fits, 86))  # 101,376 B per block on sm_86
    spills = dict(fits, shared=0, stack=16, local_stores=3)
    assert any("local memory" in v for v in verdict(spills, 90))
    assert verdict({"ok": False, "error": "OutOfResources"}, 90)[0].startswith("compile failed")
    # 128 regs x 128 threads = 16,384 per block: 4 blocks (16 warps) per SM by registers
    occ = occupancy(128, 0, 4, 90)
    assert occ["warps_per_sm"] == 16 and occ["limited_by"] == "regs"


def test_oversized_config_is_flagged(tmp_path, monkeypatch, capsys):
    """256 pixels x 64 channels of float32 in one warp cannot live in registers: the check must
    report local memory and the command exit 1."""
    from esr_kernels.triton import configs
    from esr_kernels.triton.common import DOT_IEEE, DOT_TF32
    from esr_models.cli import main

    real = configs._gpu_config

    def oversized(kernel, arch, dtype, sizes):
        if kernel == "la_reduce":
            return configs.LaunchConfig(block_p=256, num_warps=1, num_stages=1)
        return real(kernel, arch, dtype, sizes)

    monkeypatch.setattr(configs, "_gpu_config", oversized)
    out_json = tmp_path / "r.json"
    rc = main(["gpu-check", "--arch", "86", "--models", "pfdnlite", "--dtypes", "float32", "--layouts",
               "nchw", "--kernels", "_la_reduce_kernel", "--sizes", "40x40", "--cache-dir", str(tmp_path / "cache"),
               "--json", str(out_json)])
    assert rc == 1
    import json

    report = json.loads(out_json.read_text())
    rows = report["archs"]["86"]["specialisations"]  # float32: TF32 (PyTorch's default) and IEEE dots
    assert len(rows) == 2 and {r["constexprs"]["PREC"] for r in rows} == {DOT_IEEE, DOT_TF32}
    for row in rows:
        assert row["constexprs"]["BLOCK_P"] == 256 and row["verdict"] == "FAIL"
        assert row["stack"] + row["local"] > 0 or row["shared"] > 101376
    assert "FAIL" in capsys.readouterr().out


def test_odd_sizes_reach_the_specialisations_a_square_size_does_not():
    """Triton specialises int arguments on divisibility by 16: 40x40 and 47x59 give different
    specialisations of the same launch (both are recorded by default)."""
    import esr_models
    from esr_kernels.gpu_check import DEFAULT_SIZES, make_input, parse_sizes, record_launches

    assert DEFAULT_SIZES == ((40, 40), (47, 59))
    assert parse_sizes("40") == ((40, 40),) and parse_sizes("40x40, 47x59") == DEFAULT_SIZES
    model = esr_models.load("pfdnlite", fused=True, backend="triton", dtype=torch.float16)
    keys = {hw: {l.spec_key() for l in record_launches(model, make_input("float16", "nchw", hw, 1), 90)}
            for hw in DEFAULT_SIZES}
    assert keys[(47, 59)] - keys[(40, 40)]


# ---------------------------------------------------------------- a check of nothing is no pass (issue 27)
# A narrow selection (one model, dtype, layout, size, kernel, arch): each case below changes one option.
NARROW = {"--arch": "90", "--models": "rlfn", "--dtypes": "float16", "--layouts": "channels_last", "--size": "40",
          "--kernels": "_esa_low_kernel"}
KERNELS = ("_bsb_dw_kernel", "_bsb_kernel", "_concat_conv_kernel", "_conv_kernel", "_conv_tc_kernel", "_esa_down_kernel",
           "_esa_down_tc_kernel", "_esa_low_kernel", "_esa_low_tc_kernel", "_esa_out_kernel", "_esa_out_tc_kernel",
           "_gate_kernel", "_la_reduce_kernel", "_la_reduce_tc_kernel")


def _args(**changed) -> list[str]:
    opts = dict(NARROW, **{f"--{k}": v for k, v in changed.items()})
    return ["gpu-check", *(a for kv in opts.items() for a in kv)]


@pytest.mark.parametrize("option,value,named,choices", [
    ("kernels", "_no_such_kernel", "_no_such_kernel", KERNELS),
    ("kernels", "_conv_kernel,_reflect", "_reflect", KERNELS),  # a jit helper, not a kernel
    ("kernels", "", "''", KERNELS),
    ("models", "", "''", ("ifadnet", "pfdnlite", "rlfn")),
    ("models", "esrgan", "esrgan", ("ifadnet", "pfdnlite", "rlfn")),
    ("dtypes", "", "''", ("float32", "float16", "bfloat16")),
    ("layouts", "", "''", ("nchw", "channels_last")),
    ("layouts", "nhwc", "nhwc", ("nchw", "channels_last")),
    ("arch", "", "''", ("80", "86", "89", "90")),
    ("arch", "75", "75", ("80", "86", "89", "90")),
])
def test_an_unknown_or_empty_selection_is_a_usage_error(run_esr, tmp_path, option, value, named, choices):
    """It names the bad value and the choices, and nothing is recorded or compiled (the compile
    cache is never made)."""
    cache = tmp_path / "cache"
    proc = run_esr(*_args(**{option: value}), "--cache-dir", cache, "--json", tmp_path / "r.json", timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert f"--{option}" in last and named in last and all(c in last for c in choices), last
    assert proc.stdout == "" and not cache.exists() and not (tmp_path / "r.json").exists()


def test_the_known_kernels_are_the_ones_the_models_launch(pfdnlite_launches):
    """--kernels is checked against the package's Triton kernels read from source: every
    recorded launch is one of them, and each is a module attribute of esr_kernels.triton."""
    import importlib

    from esr_models.cli.gpu_check import triton_kernels

    assert triton_kernels() == KERNELS
    assert {launch.kernel for launch in pfdnlite_launches[90]} <= set(KERNELS)
    modules = [importlib.import_module(f"esr_kernels.triton.{m}")
               for m in ("bsb", "concat_conv", "conv", "conv_tc", "esa", "esa_tc", "gate", "la_reduce")]
    for name in KERNELS:
        assert any(hasattr(m, name) for m in modules), name


def test_run_check_refuses_an_empty_or_unknown_selection():
    from esr_kernels.errors import InvalidValueError
    from esr_models.cli.gpu_check import run_check

    for bad in ({"models": ()}, {"dtypes": ()}, {"layouts": ("nhwc",)}, {"archs": ()}, {"kernels": ()},
                {"kernels": ("_nope",)}):
        with pytest.raises(InvalidValueError):
            run_check(**bad)


def test_a_selection_that_launches_none_of_its_kernels_fails(run_esr, tmp_path):
    """RLFN has no LocalAttention: 0 specialisations compiled or cached is a failure (exit 1),
    said plainly, not "0 violation(s)" and a pass."""
    import json

    cache, out = tmp_path / "cache", tmp_path / "r.json"
    proc = run_esr(*_args(models="rlfn", dtypes="float32", layouts="nchw", size="24x32", kernels="_la_reduce_kernel"),
                   "--batch", "1", "--cache-dir", cache, "--json", out, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr
    assert "nothing was checked" in proc.stderr and "_la_reduce_kernel" in proc.stderr
    report = json.loads(out.read_text())
    assert report["timing_s"]["compiled"] + report["timing_s"]["cached"] == 0 and not report["archs"]
    assert report["input"]["kernels"] == ["_la_reduce_kernel"]
