"""The memory budget that decides automatic tiling (esr_models.infer.memory): ESR_MAX_MEMORY_MB when
valid, and in a container its cgroup's limit minus the working set (issue #18)."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.shared


# ---------------------------------------------------------------- ESR_MAX_MEMORY_MB

def test_memory_cap_is_read_when_valid(monkeypatch):
    from esr_models.infer.memory import available_bytes

    monkeypatch.setenv("ESR_MAX_MEMORY_MB", "1.5")
    assert available_bytes(torch.device("cpu")) <= int(1.5 * 2**20)


# ---------------------------------------------------------------- memory in containers: limit minus working set

def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


MB = 1 << 20


@pytest.mark.parametrize("layout", ["v2", "v2-nested", "v2-no-limit", "v1", "v1-nested", "v1-no-limit"])
def test_cgroup_memory_is_the_limit_minus_the_working_set(tmp_path, layout):
    """Page cache (2 GB of it here, as after reading many files) is not counted as used: the
    kernel reclaims it before it kills anything."""
    from esr_models.infer.memory import cgroup_available_bytes

    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    proc.write_text("0::/\n")
    if layout.startswith("v2"):
        where = "job/step" if layout == "v2-nested" else ""
        proc.write_text(f"0::/{where}\n")
        _files(root, {"cgroup.controllers": "cpu memory\n"})
        _files(root / where, {
            "memory.max": "max\n" if layout == "v2-no-limit" else f"{4096 * MB}\n",
            "memory.current": f"{3000 * MB}\n",
            "memory.stat": f"anon {900 * MB}\nfile {2048 * MB}\nkernel {52 * MB}\nshmem {100 * MB}\n"
                           f"inactive_file {1500 * MB}\n",
        })
        if layout == "v2-nested":  # a looser limit above does not loosen the inner one
            _files(root / "job", {"memory.max": f"{8192 * MB}\n", "memory.current": f"{3000 * MB}\n",
                                  "memory.stat": f"file {2048 * MB}\nshmem {100 * MB}\n"})
        # working set = 3000 - 2048 + 100 (tmpfs is not reclaimable) = 1052 MB
        want = None if layout == "v2-no-limit" else (4096 - 1052) * MB
    else:
        where = "docker/abc" if layout == "v1-nested" else ""
        proc.write_text(f"4:memory:/{where}\n0::/\n")
        limit = str(2**63 - 4096) if layout == "v1-no-limit" else str(4096 * MB)
        _files(root / "memory" / where, {
            "memory.limit_in_bytes": f"{limit}\n",
            "memory.usage_in_bytes": f"{3000 * MB}\n",
            "memory.stat": f"cache {2100 * MB}\nrss {800 * MB}\nshmem {100 * MB}\n"
                           f"total_cache {2048 * MB}\ntotal_rss {850 * MB}\ntotal_shmem {100 * MB}\n",
        })
        want = None if layout == "v1-no-limit" else (4096 - (3000 - 2048 + 100)) * MB
    assert cgroup_available_bytes(str(root), str(proc)) == want


def test_no_cgroup_files_means_no_cgroup_limit(tmp_path):
    from esr_models.infer.memory import cgroup_available_bytes

    assert cgroup_available_bytes(str(tmp_path / "nothing"), str(tmp_path / "none")) is None


def test_available_bytes_takes_the_cgroup_limit(monkeypatch):
    from esr_models.infer import memory

    monkeypatch.setattr(memory, "cgroup_available_bytes", lambda *a, **k: 123 * MB)
    monkeypatch.delenv("ESR_MAX_MEMORY_MB", raising=False)
    assert memory.available_bytes(torch.device("cpu")) <= 123 * MB


# ---------------------------------------------------------------- sizes in messages, out of memory (issue 27)

def test_sizes_below_a_gib_are_given_in_mib():
    from esr_models.io.jobs import format_bytes

    assert format_bytes(0) == "0 MiB"
    assert format_bytes(0.5 * MB) == "0.5 MiB"
    assert format_bytes(30 * MB) == "30 MiB"
    assert format_bytes(1023 * MB) == "1023 MiB"
    assert format_bytes(1.5 * 2**30) == "1.5 GiB"


def test_a_small_cap_is_reported_in_mib_not_as_zero_gib(run_esr, tmp_path, random_png):
    src = random_png(tmp_path / "a.png", size=(128, 128))
    proc = run_esr("upscale", src, "-o", tmp_path / "out", "--model", "pfdnlite", "-q",
                   env={"ESR_MAX_MEMORY_MB": "40"}, check=0, timeout=300)
    note = [ln for ln in proc.stderr.splitlines() if "tiling automatically" in ln]
    assert len(note) == 1 and "GiB" not in note[0], proc.stderr
    assert re.search(r"does not fit in the \d+ MiB available", note[0]), note[0]


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] data. DefaultCPUAllocator: not enough memory: you tried to "
           "allocate 768000000 bytes.")


@pytest.mark.parametrize("exc, where", [
    (RuntimeError(CPU_OOM), "out of memory (an allocation of 732 MiB failed)"),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                            "79.1 GiB of which 1.2 GiB is free."), "out of GPU memory (an allocation of 2.00 GiB "
                                                                   "failed)"),
    (MemoryError(), "out of memory: "),
])
def test_out_of_memory_says_what_ran_out_and_what_to_do(exc, where):
    from esr_models.io.jobs import describe_error

    msg = describe_error(exc)
    assert msg.startswith(where), msg
    assert "--tile" in msg and "ESR_MAX_MEMORY_MB" in msg
    assert "enforce fail" not in msg and "alloc_cpu" not in msg


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    from esr_models.io.jobs import describe_error

    assert describe_error(RuntimeError("shape mismatch")) == "RuntimeError: shape mismatch"


# ---------------------------------------------------------------- the cap holds (issue 27)

def _run_measured(args, env) -> tuple[int, str, int]:
    """``esr ARGS`` in a subprocess: (exit status, stderr, its own peak RSS in bytes). Not
    ``run_esr``: the peak must be this one child's (``os.wait4``), where RUSAGE_CHILDREN would
    give the largest of every child this test session has waited for."""
    proc = subprocess.Popen([sys.executable, "-m", "esr_models.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, **env})
    try:
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
    return os.waitstatus_to_exitcode(status), err, usage.ru_maxrss * 1024  # Linux: KiB


# What a run holds above the same run on a tiny image besides its planned buffers: the allocator's
# slack (freed tiles kept for reuse), oneDNN's scratch for the larger tile shape, the PNG decoder
# and encoder.
FIXED_OVERHEAD_MB = 20


@pytest.mark.shared
def test_peak_memory_stays_within_the_cap(tmp_path, random_png):
    """ESR_MAX_MEMORY_MB holds for an image whose output alone, as float32, is half the cap: the
    peak RSS above the same command's on a tiny image (python, torch, the weights) stays within the
    cap plus FIXED_OVERHEAD_MB (measured here: 13 MB). Before, the full-size float32 output,
    weights and clamped copies took ~49 bytes per output pixel (measured here: 76 MB)."""
    cap_mb, side = 24, 256
    env = {"ESR_MAX_MEMORY_MB": str(cap_mb), "OMP_NUM_THREADS": "2"}
    small = random_png(tmp_path / "small" / "s.png", size=(24, 24))
    big = random_png(tmp_path / "big" / "b.png", size=(side, side))
    rc, err, base = _run_measured(["upscale", small, "-o", tmp_path / "o1", "--model", "pfdnlite", "-q"], env)
    assert rc == 0, err
    rc, err, peak = _run_measured(["upscale", big, "-o", tmp_path / "o2", "--model", "pfdnlite", "-q"], env)
    assert rc == 0, err
    assert "tiling automatically" in err
    from PIL import Image as PILImage

    assert PILImage.open(tmp_path / "o2" / "b_x4.png").size == (4 * side, 4 * side)
    grown = (peak - base) / MB
    assert grown <= cap_mb + FIXED_OVERHEAD_MB, f"peak RSS grew by {grown:.0f} MB (cap {cap_mb} MB)"


def test_an_image_whose_output_alone_exceeds_the_cap_fails_by_name(run_esr, tmp_path, random_png):
    src = random_png(tmp_path / "a.png", size=(400, 400))  # 1600x1600 RGB output: 7.3 MiB + the writer's 9.8
    proc = run_esr("upscale", src, "-o", tmp_path / "out", "--model", "pfdnlite", "-q",
                   env={"ESR_MAX_MEMORY_MB": "12"}, check=1, timeout=300)
    assert f"{src}: 400x400: its input and 4x output images alone need" in proc.stderr
    assert "ESR_MAX_MEMORY_MB=12" in proc.stderr and "0 upscaled, 0 skipped, 1 failed" in proc.stderr
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads VmPeak from /proc")
def test_a_real_out_of_memory_is_reported_with_what_to_do(tmp_path, random_png):
    """Under an address-space limit (``ulimit -v``) 150 MB above what a tiny upscale needs, a
    whole-image forward of 560x560 (~800 MB; 400x400 peaked within 150 MB of the tiny run on
    some trees, and then fitted) fails in torch's CPU allocator: the file fails by name with
    the advice, not "[enforce fail at alloc_cpu.cpp...]"."""
    tiny = random_png(tmp_path / "t.png", size=(24, 24))
    big = random_png(tmp_path / "b.png", size=(560, 560))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # no thread to start under the limit
    probe = subprocess.run([sys.executable, "-c", "import sys; from esr_models import cli; "
                            f"cli.main(['upscale', {str(tiny)!r}, '-o', {str(tmp_path / 'o1')!r}, '-q', "
                            "'--model', 'pfdnlite']); print(open('/proc/self/status').read())"],
                           capture_output=True, text=True, env=env, timeout=300, check=True)
    vm_peak_kib = int(re.search(r"VmPeak:\s+(\d+) kB", probe.stdout).group(1))
    q = shlex.quote
    cmd = (f"ulimit -v {vm_peak_kib + 150 * 1024} && exec {q(sys.executable)} -m esr_models.cli upscale "
           f"{q(str(big))} -o {q(str(tmp_path / 'o2'))} -q --model pfdnlite --tile 560")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, proc.stderr
    assert f"error: {big}: out of memory (an allocation of " in proc.stderr
    assert "--tile" in proc.stderr and "ESR_MAX_MEMORY_MB" in proc.stderr
    assert "enforce fail" not in proc.stderr and "Traceback" not in proc.stderr
