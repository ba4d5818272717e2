"""``esr upscale --ray``: the same batch on a local Ray cluster started by these tests (2 CPUs,
so 2 one-CPU workers), through the CLI as users run it (a subprocess joining the cluster)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from esr_models import cli
from esr_models.io.outputs import TEMP_PREFIX

pytestmark = pytest.mark.shared

MODEL = "pfdnlite"


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of 2 CPUs for this module: (its address, its temporary folder)."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    temp = tempfile.mkdtemp(prefix="esr-ray-", dir="/tmp")  # short: Ray's socket paths
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address, temp
    finally:
        mine = _processes_of(temp)
        ray.shutdown()
        deadline = time.monotonic() + 30  # leave no Ray process behind
        while (left := [p for p in mine if _alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"Ray processes left running: {left}"


def _images(folder: Path, n: int, corrupt: bool = False) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = 20 + i % 5, 24 + i % 3  # mixed sizes: decoded in the workers, not in Ray Data
        arr = (rng.random((h, w, 3)) * 255).astype(np.uint8)
        if i % 4 == 1:
            PILImage.fromarray(np.dstack([arr, arr[..., :1]]), "RGBA").save(folder / f"im{i:02d}.png")
        elif i % 4 == 2:
            PILImage.fromarray(arr[..., 0], "L").save(folder / f"im{i:02d}.png")
        else:
            PILImage.fromarray(arr).save(folder / f"im{i:02d}.png")
    if corrupt:
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return folder


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_same_outputs_and_report_as_the_local_run_then_resumes(run_esr, cluster, tmp_path):
    address, _ = cluster
    src = _images(tmp_path / "in", 5, corrupt=True)
    # Byte-identical, as like with like: the workers run the local loop's code (batch.run_job,
    # Upscaler, one image at a time, NCHW) with the same weights (a torch.save round trip is
    # exact) on this CPU. Torch's CPU convolutions can differ in the last bit with the number of
    # threads: the local run uses the one thread each Ray worker gets here.
    local = run_esr("upscale", src, "-o", tmp_path / "local", "--model", MODEL, "-q",
                    env={"OMP_NUM_THREADS": "1"}, check=1, timeout=300)
    on_ray = run_esr("upscale", src, "-o", tmp_path / "ray", "--model", MODEL, "-q", "--ray", address,
                     "--ray-workers", "2", check=1, timeout=300)
    for proc in (local, on_ray):
        assert "5 upscaled, 0 skipped, 1 failed" in proc.stderr
        assert f"{src / 'corrupt.png'}: " in proc.stderr.split("failed:")[1]
    assert "2 worker(s), 1 CPU(s) each" not in on_ray.stderr  # -q: no banner
    ray_out, local_out = _outputs(tmp_path / "ray"), _outputs(tmp_path / "local")
    assert len(ray_out) == 5 and ray_out.keys() == local_out.keys()
    assert all(ray_out[k] == local_out[k] for k in local_out), "outputs differ from the local run"

    # A re-run skips the finished outputs (decided by the driver: no worker starts for them).
    again = run_esr("upscale", src / "im*.png", "-o", tmp_path / "ray", "--model", MODEL, "--ray", address,
                    check=0, timeout=300)
    assert "0 upscaled, 5 skipped, 0 failed" in again.stderr
    assert _outputs(tmp_path / "ray") == ray_out


def _processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of this machine's processes."""
    procs = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            procs[int(d.name)] = (ppid, cmd)
    return procs


def _processes_of(temp: str) -> list[int]:
    """The processes of the Ray started in ``temp``: those naming it and their children (Ray
    renames worker processes, so they are told by their parent)."""
    procs = _processes()
    roots = {pid for pid, (_, cmd) in procs.items() if temp in cmd}
    return sorted(roots | {pid for pid, (ppid, _) in procs.items() if ppid in roots})


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _workers_of(temp: str) -> list[int]:
    """PIDs of the UpscaleWorker actors of the Ray started in ``temp``."""
    procs = _processes()
    return [pid for pid in _processes_of(temp) if "UpscaleWorker" in procs.get(pid, (0, ""))[1]]


def _finished(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if not p.name.startswith(TEMP_PREFIX)]


def test_worker_killed_mid_run_loses_nothing_and_writes_nothing_twice(cluster, tmp_path):
    address, temp = cluster
    src = _images(tmp_path / "in", 12)
    out = tmp_path / "out"
    # Test hook: each worker sleeps 1 s after each file, so that the kill lands mid-run and,
    # most likely, between a file's output being written and its result reaching the driver.
    proc = subprocess.Popen([sys.executable, "-m", "esr_models.cli", "upscale", str(src), "-o", str(out),
                             "--model", MODEL, "-q", "--ray", address, "--ray-workers", "2"],
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "ESR_TEST_DELAY_S": "1"})
    try:
        deadline = time.monotonic() + 180
        while not (out.is_dir() and _finished(out)):
            assert proc.poll() is None and time.monotonic() < deadline, "no output appeared"
            time.sleep(0.05)
        workers = _workers_of(temp)
        assert workers, "no UpscaleWorker process found"
        done_before = {p.name: p.stat().st_ino for p in _finished(out)}
        os.kill(workers[0], signal.SIGKILL)
        _, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert len(done_before) < 12, "the kill did not land mid-run"
    assert proc.returncode == 0, stderr
    assert "12 upscaled, 0 skipped, 0 failed" in stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == [f"im{i:02d}_x4.png" for i in range(12)]  # every output, no temporary file
    assert not any(n.startswith(TEMP_PREFIX) for n in names)
    for name, ino in done_before.items():  # outputs written before the kill were not rewritten
        assert (out / name).stat().st_ino == ino
    for p in out.iterdir():
        PILImage.open(p).load()  # complete files


def test_without_ray_installed_says_how_to_install(tmp_path, monkeypatch, capsys):
    _images(tmp_path / "in", 1)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    rc = cli.main(["upscale", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--ray"])
    err = capsys.readouterr().err
    assert rc == 2 and "pip install -e '.[ray]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_an_input_after_ray_is_not_taken_for_an_address(tmp_path, capsys):
    src = _images(tmp_path / "in", 1)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["upscale", "--ray", str(src), "-o", str(tmp_path / "out")])
    assert exit_.value.code == 2 and "is not a Ray address" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_workers_that_cannot_start_are_a_setup_error(run_esr, cluster, tmp_path):
    """Joining a cluster, the device and backend are checked where they run: on the workers.
    Their failure is reported in one error line with exit 2, and the output folder is gone."""
    address, _ = cluster
    src = _images(tmp_path / "in", 2)
    proc = run_esr("upscale", src, "-o", tmp_path / "out", "--model", MODEL, "--fused", "--backend", "cuda",
                   "--device", "cpu", "--ray", address, "-q", check=2, timeout=300)
    # (Ray's own log lines, the worker's traceback among them, may come before or after it.)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: the Ray workers could not run: ")]
    assert len(errors) == 1 and "--backend cuda" in errors[0], proc.stderr[-2000:]
    assert "upscaled" not in proc.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("listening", [False, True])
def test_an_address_where_no_ray_answers_is_an_error_within_the_timeout(run_esr, tmp_path, listening):
    """Nothing listening on the port: an error at once; something that accepts connections but is
    not Ray: an error after --ray-connect-timeout (Ray alone retried for many minutes)."""
    import socket

    pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]')")
    src = _images(tmp_path / "in", 1)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    port = server.getsockname()[1]
    if listening:
        server.listen(1)  # accepts, never answers
    else:
        server.close()  # the port just freed: nothing listens there
    try:
        start = time.monotonic()
        proc = run_esr("upscale", src, "-o", tmp_path / "out", "--model", MODEL, "-q",
                       "--ray", f"127.0.0.1:{port}", "--ray-connect-timeout", "3", check=2, timeout=60)
        took = time.monotonic() - start
    finally:
        server.close()
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and f"--ray 127.0.0.1:{port}" in errors[0], proc.stderr[-2000:]
    if listening:
        assert "within 3 s (--ray-connect-timeout)" in errors[0]
    else:
        assert "cannot connect" in errors[0] and "Connection refused" in errors[0]
    assert took < 40, f"took {took:.0f} s"
    assert not (tmp_path / "out").exists()
