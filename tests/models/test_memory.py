"""The memory budget that decides automatic tiling (esr_models.infer.memory): ESR_MAX_MEMORY_MB when
valid, and in a container its cgroup's limit minus the working set (issue #18)."""
from __future__ import annotations

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
