"""build_cuda_home.find_cuda_home: the CUDA toolkit root setup.py builds against, derived from
the nvcc on PATH even when that nvcc is a wrapper script outside the toolkit."""
from __future__ import annotations

import importlib.util
import os
import stat
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load():
    spec = importlib.util.spec_from_file_location("build_cuda_home", ROOT / "build_cuda_home.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bch = _load()


def _script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _fake_toolkit(root: Path, report_top: bool = True) -> Path:
    """A toolkit folder whose bin/nvcc answers --dryrun as nvcc does (``#$ TOP=`` on stderr)."""
    (root / "include").mkdir(parents=True)
    (root / "include" / "cuda_runtime.h").write_text("/* fake */\n")
    top = f'echo "#\\$ TOP={root}/bin/.." >&2\n' if report_top else ""
    _script(root / "bin" / "nvcc", f'echo "#\\$ _HERE_={root}/bin" >&2\n{top}exit 0\n')
    return root


def _which(path):
    return lambda name: str(path) if name == "nvcc" and path is not None else None


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script fake nvcc")
def test_wrapper_script_outside_toolkit(tmp_path):
    toolkit = _fake_toolkit(tmp_path / "cuda-13.0")
    wrapper = _script(tmp_path / "usr" / "bin" / "nvcc", f'exec "{toolkit}/bin/nvcc" "$@"\n')
    # torch's own guess would be the wrapper's grandparent, tmp_path/"usr": no toolkit there.
    assert not (tmp_path / "usr" / "include").exists()
    assert bch.find_cuda_home(env={}, which=_which(wrapper)) == str(toolkit)


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks and shell scripts")
def test_symlinked_nvcc_resolved_without_running_it(tmp_path):
    toolkit = tmp_path / "tk"
    (toolkit / "include").mkdir(parents=True)
    (toolkit / "include" / "cuda_runtime.h").write_text("")
    # An nvcc that fails if run: the symlink's target folder is enough.
    _script(toolkit / "bin" / "nvcc", "exit 3\n")
    link = tmp_path / "bin" / "nvcc"
    link.parent.mkdir()
    os.symlink(toolkit / "bin" / "nvcc", link)
    assert bch.find_cuda_home(env={}, which=_which(link)) == str(toolkit)


def test_preset_cuda_home_wins(tmp_path):
    toolkit = _fake_toolkit(tmp_path / "a")
    other = tmp_path / "preset"
    assert bch.find_cuda_home(env={"CUDA_HOME": str(other)}, which=_which(toolkit / "bin" / "nvcc")) == str(other)
    assert bch.find_cuda_home(env={"CUDA_PATH": str(other)}, which=_which(None)) == str(other)


def test_no_nvcc_means_no_cuda_home():
    assert bch.find_cuda_home(env={}, which=_which(None)) is None


@pytest.mark.skipif(sys.platform == "win32", reason="shell-script fake nvcc")
def test_underivable_toolkit_says_to_set_cuda_home(tmp_path):
    # The wrapper's toolkit reports no TOP, and nothing beside the wrapper is a toolkit.
    toolkit = _fake_toolkit(tmp_path / "tk", report_top=False)
    wrapper = _script(tmp_path / "w" / "bin" / "nvcc", f'exec "{toolkit}/bin/nvcc" "$@"\n')
    with pytest.raises(bch.CudaHomeError, match="Set CUDA_HOME"):
        bch.find_cuda_home(env={}, which=_which(wrapper))
    # A TOP that is not a toolkit is refused too, naming it.
    liar = _script(tmp_path / "l" / "bin" / "nvcc", f'echo "#\\$ TOP={tmp_path}/nowhere/bin/.." >&2\n')
    with pytest.raises(bch.CudaHomeError, match="nowhere"):
        bch.find_cuda_home(env={}, which=_which(liar))


def test_setup_sets_cuda_home_before_cpp_extension_import():
    """setup.py must set CUDA_HOME before importing torch.utils.cpp_extension, which reads it
    once at import (CUDA_HOME = _find_cuda_home() at module level)."""
    src = (ROOT / "setup.py").read_text()
    body = src[src.index("def native_extensions"):]
    assert body.index("_set_cuda_home(torch)") < body.index("from torch.utils.cpp_extension import")
    assert "build_cuda_home.py" in (ROOT / "MANIFEST.in").read_text()
