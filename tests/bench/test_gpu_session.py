"""benchmarks/gpu_session.py, the prepared command for a lent GPU: its CPU dry run runs every
step and writes the report (so the script cannot rot between the rare GPU sessions), the
preparation fills the folder the device needs, and its pieces do what the report says."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.shared
@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_report(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # the session sets it for the one step that needs it
    tmp = tmp_path / "tmp"  # a private temporary folder: the session's work folder must not stay in it
    tmp.mkdir()
    env["TMPDIR"] = str(tmp)
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_session", "--dry-run", "--out", str(out),
                           "--budget-s", "400", "--wheels", str(tmp_path / "no-wheels")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((out / "gpu-session.json").read_text())
    steps = {s["step"]: s for s in report["steps"]}
    assert list(steps) == ["install", "warm", "env", "selftest", "pytest", "timing", "profile", "sweep"]
    assert report["dry_run"] is True and "DRY RUN" in proc.stdout
    # install and the GPU tests are skipped on CPU and say why; nothing skipped is called passed
    assert steps["install"]["status"] == "skipped" and steps["install"]["result"]["commands"]
    assert steps["pytest"]["status"] == "skipped" and "no CUDA device" in steps["pytest"]["why"]
    assert steps["pytest"]["result"]["counts"]["passed"] == 0
    # the others ran and produced their numbers
    assert steps["warm"]["status"] == "ok" and steps["warm"]["result"]["violations"] == 0
    env_r = steps["env"]["result"]
    assert env_r["copy_gb_s"] > 0 and env_r["fp32_tflops"] > 0 and env_r["versions"]["torch"] == torch.__version__
    assert steps["selftest"]["result"]["verdict"] == "PASS" and steps["selftest"]["result"]["checks"]
    rows = steps["timing"]["result"]["rows"]
    assert {r["provider"] for r in rows} == {"eager", "cpu"} and all(r["ms"] > 0 for r in rows)
    assert all(r["roofline_ms"] > 0 for r in rows), steps["timing"]["result"].get("roofline_error")
    (prof,) = steps["profile"]["result"]["rows"]  # one model, v1, CPU activities in the dry run
    assert prof["launches"] > 0 and prof["total_us"] > 0 and prof["kernels"], prof
    assert sum(prof["measured_us_by_op"].values()) == pytest.approx(prof["total_us"], rel=1e-3)
    assert "tf32" in steps["profile"]["result"]
    sweep = steps["sweep"]["result"]
    assert sweep["interpreter"] is True and sweep["best"]["la_reduce"]["passed"]
    # the short table comes last
    assert proc.stdout.rstrip().splitlines()[-1].lstrip().startswith("pfdnlite")
    assert report["exit_status"] == 0 and "every step ran" in proc.stdout
    assert not list(tmp.glob("esr-gpu-session-*"))  # the step files went with the session
    # the report is never overwritten
    again = subprocess.run([sys.executable, "-m", "benchmarks.gpu_session", "--dry-run", "--out", str(out)],
                           cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert again.returncode != 0 and "exists" in again.stderr


def _session(*args, tmp: Path, timeout=120) -> subprocess.CompletedProcess:
    """``python -m benchmarks.gpu_session ARGS`` with TMPDIR=``tmp`` (its work folder goes there)."""
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu_session", *map(str, args)], cwd=ROOT,
                          env=dict(os.environ, TMPDIR=str(tmp)), capture_output=True, text=True, timeout=timeout)


def test_a_budget_that_runs_no_step_is_a_failure_naming_them(tmp_path):
    """--budget-s 0 runs nothing: the exit status says the session did not do what was asked
    (README: 0 only when every step ran), the summary names the steps not run, and the temporary
    work folder is gone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    (tmp / "someone-else.txt").write_text("x")
    out = tmp_path / "out"
    proc = _session("--dry-run", "--out", out, "--budget-s", "0", "--steps", "env,timing", tmp=tmp)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "not run (no time left in the budget): env, timing" in proc.stdout
    assert proc.stderr.strip().splitlines()[-1] == "gpu_session: INCOMPLETE: not run (no time left in the budget): env, timing"
    report = json.loads((out / "gpu-session.json").read_text())
    assert [s["status"] for s in report["steps"]] == ["not run", "not run"] and report["exit_status"] == 1
    assert sorted(p.name for p in tmp.iterdir()) == ["someone-else.txt"]  # no esr-gpu-session-* left
    assert sorted(p.name for p in out.iterdir()) == ["gpu-session.json", "gpu-session.log"]


def test_out_naming_a_file_is_one_line_and_nothing_runs(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    for overwrite in ([], ["--overwrite"]):  # never replaced: --out is a folder, not a report
        proc = _session("--dry-run", "--out", mine, "--budget-s", "0", *overwrite, tmp=tmp)
        assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
        assert proc.stderr.strip().splitlines() == [f"gpu_session: error: --out {mine}: not a folder (--out is the "
                                                    "folder that gets gpu-session.json and gpu-session.log)"]
        assert mine.read_text() == "mine" and not list(tmp.iterdir())


def test_an_earlier_report_is_replaced_only_with_overwrite_never_through_a_link(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    target = tmp_path / "mine.json"
    target.write_text("mine")
    (out / "gpu-session.json").symlink_to(target)
    (out / "gpu-session.log").write_text("an earlier log")
    proc = _session("--dry-run", "--out", out, "--budget-s", "0", "--steps", "env", tmp=tmp)
    assert proc.returncode == 2 and proc.stdout == "", proc.stdout + proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "gpu-session.json: the file exists (add --overwrite to replace it)" in line
    assert (out / "gpu-session.log").read_text() == "an earlier log" and not list(tmp.iterdir())
    proc = _session("--dry-run", "--out", out, "--budget-s", "0", "--steps", "env", "--overwrite", tmp=tmp)
    assert proc.returncode == 1 and "not run" in proc.stdout, proc.stdout + proc.stderr  # the budget, not --out
    assert not (out / "gpu-session.json").is_symlink() and target.read_text() == "mine"
    assert json.loads((out / "gpu-session.json").read_text())["steps"][0]["step"] == "env"
    assert "an earlier log" not in (out / "gpu-session.log").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["gpu-session.json", "gpu-session.log"]


@pytest.mark.parametrize("keep", [False, True])
def test_the_work_folder_is_removed_on_failure_unless_kept(tmp_path, monkeypatch, capsys, keep):
    from benchmarks import gpu_session

    made = []
    real = gpu_session.tempfile.mkdtemp
    monkeypatch.setattr(gpu_session.tempfile, "mkdtemp",
                        lambda **kw: made.append(real(dir=tmp_path, **kw)) or made[-1])

    def broken(args, work):
        raise RuntimeError("a bug in the session")

    monkeypatch.setattr(gpu_session, "_install_wheels", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        gpu_session.main(["--dry-run", "--out", str(tmp_path / "out"), "--steps", "env",
                          *(["--keep-work"] if keep else [])])
    (work,) = made
    assert Path(work).is_dir() == keep and Path(work).name.startswith("esr-gpu-session-")
    assert (f"step files kept in {work}" in capsys.readouterr().err) == keep


def test_a_step_over_its_box_is_a_timeout_and_keeps_what_it_saved(tmp_path, monkeypatch):
    """The step's process is replaced by one that hangs after the step saved a partial result:
    the session kills it at its box, reports a timeout and keeps the partial result."""
    from benchmarks import gpu_session

    monkeypatch.setitem(gpu_session.BOXES, "env", 6)
    work = tmp_path / "work"
    work.mkdir()
    (work / "step-env.json").write_text(json.dumps({"partial": True}))
    real_start = gpu_session._start_step

    def start(name, args, w, deadline):
        entry = real_start(name, args, w, deadline)
        entry["_proc"].kill()
        entry["_proc"].wait()
        entry["_proc"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        return entry

    monkeypatch.setattr(gpu_session, "_start_step", start)
    rc = gpu_session.main(["--dry-run", "--out", str(tmp_path / "out"), "--work", str(work), "--steps", "env"])
    report = json.loads((tmp_path / "out" / "gpu-session.json").read_text())
    (entry,) = report["steps"]
    assert rc == 1 and entry["status"] == "timeout" and entry["result"] == {"partial": True}
    assert entry["seconds"] < 30


def test_prepare_puts_weights_and_a_py312_wheel_in_place(tmp_path):
    """The network step, done here: pip download of the wheels the lent image lacks."""
    from benchmarks import gpu_session

    weights = tmp_path / "w"
    weights.mkdir()
    (weights / "team01_pfdnlite.pth").write_bytes(b"x")
    try:
        got = gpu_session.prepare(tmp_path / ".gpu", weights)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"pip download failed (no package index here?): {exc}")
    assert got["weights"] == ["team01_pfdnlite.pth"]
    assert (tmp_path / ".gpu" / "shared" / "weights" / "team01_pfdnlite.pth").read_bytes() == b"x"
    assert any(w.startswith("pypng-") and w.endswith("-py3-none-any.whl") for w in got["wheels"])
    assert "--wheels" in got["command"] and "ESR_SHARED_DIR" in got["command"]


def test_install_builds_the_cuda_extension_alone_for_this_gpu_without_the_network(tmp_path):
    from benchmarks.gpu_session_steps import install_commands, wheel_command

    (cmd, env), = install_commands(tmp_path, [], "9.0")
    assert {"--no-index", "--no-build-isolation", "--no-deps", "-e"} <= set(cmd)
    assert env["TORCH_CUDA_ARCH_LIST"] == "9.0" and env["ESR_SKIP_CPU_BUILD"] == "1" and int(env["MAX_JOBS"]) >= 1
    wcmd = wheel_command(tmp_path, [Path("a.whl")])
    assert "--no-index" in wcmd and "--target" in wcmd and str(tmp_path / "site") in wcmd


def test_timing_plan_puts_the_protocol_first_and_compile_last():
    from benchmarks.gpu_session_timing import _selected, plan_cases

    cases = plan_cases(["ifadnet", "rlfn"], dry_run=False)
    first = cases[:6]
    assert all(c.dtype == "float32" and c.batch == 1 and c.size == "div2k-val-like" for c in first)
    assert {c.provider for c in first} == {"eager", "triton", "cuda"}
    assert cases[-1].provider == "compile" and any(c.batch == 4 and c.graph for c in cases)
    assert any(c.name == "eager/float32/ieee" for c in cases)
    assert cases[-1].name == "compile/float16/channels_last/max-autotune"
    # issue 28: TF32 off is IEEE for the Triton kernels too; the v1 / v2 dense-conv A/B, same layout
    assert any(c.name == "triton/float32/ieee" for c in cases)
    for dt in ("float16", "float32"):
        ab = [c.name for c in cases if c.provider == "triton" and c.dtype == dt and c.channels_last and not c.graph
              and c.model == "rlfn"]
        assert ab == [f"triton/{dt}/channels_last/conv_v1", f"triton/{dt}/channels_last/conv_v2"]
    assert [c for c in cases if _selected(c, "compile/")] == [c for c in cases if c.provider == "compile"]


def test_conv_ab_says_what_auto_should_run():
    from benchmarks.gpu_session_timing import conv_ab

    def row(model, dtype, conv, ms, graph=False):
        return {"provider": "triton", "model": model, "dtype": dtype, "conv": conv, "ms": ms, "graph": graph}

    rows = [row("rlfn", "float16", "v1", 6.0), row("rlfn", "float16", "v2", 3.0),
            row("span", "float16", "v1", 4.0), row("span", "float16", "v2", 5.0),
            row("span", "float16", "v2", 1.0, graph=True), {"provider": "triton", "model": "span", "error": "x"}]
    ab = conv_ab(rows)
    assert ab["v1_over_v2"] == {"rlfn": {"float16": 2.0}, "span": {"float16": 0.8}}
    assert ab["auto_should_be"] == "v1"  # v2 lost one pair
    assert conv_ab(rows[:2])["auto_should_be"] == "v2" and conv_ab([])["auto_should_be"] is None


def test_modelled_time_is_the_roofline_of_the_measured_ceilings():
    from benchmarks.gpu_session_timing import modelled_ms

    ceil = {"copy_gb_s": 1000.0, "bf16_tflops": 100.0, "fp32_tflops": 10.0}
    # 1 GB at 1000 GB/s = 1 ms; 1e12 MACs at 100 TFLOP/s = 20 ms (float16) or 200 ms (float32)
    assert modelled_ms([[1e9, 0]], ceil, "float16") == pytest.approx(1.0)
    assert modelled_ms([[1e9, 1e12]], ceil, "float16") == pytest.approx(20.0)
    assert modelled_ms([[1e9, 1e12]], ceil, "float32") == pytest.approx(200.0)
    assert modelled_ms([[1e9, 0]], {}, "float16") is None


def test_parse_junit_counts_each_outcome(tmp_path):
    from benchmarks.gpu_session_steps import parse_junit

    xml = tmp_path / "j.xml"
    xml.write_text('<testsuites><testsuite>'
                   '<testcase classname="t" name="a" time="1.5"/>'
                   '<testcase classname="t" name="b" time="0.1"><failure message="boom"/></testcase>'
                   '<testcase classname="t" name="c" time="0"><skipped message="no CUDA device"/></testcase>'
                   '</testsuite></testsuites>')
    got = parse_junit(xml)
    assert got["counts"] == {"passed": 1, "failed": 1, "error": 0, "skipped": 1}
    assert got["tests"][1] == {"test": "t::b", "outcome": "failed", "seconds": 0.1, "message": "boom"}


def test_launch_config_override_applies_to_gpu_launches_only():
    from esr_kernels.triton.configs import INTERPRETER, LaunchConfig, launch_config, override

    forced = LaunchConfig(block_p=128, num_warps=8, num_stages=1)
    table = launch_config("bsb", 90, torch.float16, c_in=36, co_pad=64)
    with override("bsb", forced):
        assert launch_config("bsb", 90, torch.float16, c_in=36, co_pad=64) == forced
        assert launch_config("conv", 90, torch.float16) != forced
        assert launch_config("bsb", None, torch.float16) is INTERPRETER
    assert launch_config("bsb", 90, torch.float16, c_in=36, co_pad=64) == table
    with pytest.raises(ValueError, match="unknown kernel"):
        with override("nope", forced):
            pass
