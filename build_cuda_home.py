"""Find the CUDA toolkit root (CUDA_HOME) for the build, from nvcc itself.

torch.utils.cpp_extension guesses CUDA_HOME as the parent of the folder holding the first
``nvcc`` on PATH, and reads it once, when that module is imported. When ``nvcc`` on PATH is a
wrapper script or a symlink outside the toolkit (``/usr/local/bin/nvcc`` doing
``exec /usr/local/cuda-13.0/bin/nvcc "$@"``), that guess is ``/usr/local`` and the build fails
later, with ``cuda_runtime.h`` not found. nvcc knows where it lives: its ``--dryrun`` output
has a ``#$ TOP=<toolkit>/bin/..`` line. setup.py calls :func:`find_cuda_home` and sets
``CUDA_HOME`` before importing cpp_extension.

This file sits at the repository root, beside setup.py (not in a package: it is build-time
only); MANIFEST.in puts it into sdists.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from typing import Callable, Mapping


class CudaHomeError(RuntimeError):
    """nvcc was found but the toolkit root it belongs to could not be derived."""


def _is_toolkit(root: str) -> bool:
    """A CUDA toolkit root has include/cuda_runtime.h, as cpp_extension expects."""
    return os.path.isfile(os.path.join(root, "include", "cuda_runtime.h"))


def _top_from_dryrun(nvcc: str, timeout: float = 60.0) -> str | None:
    """The ``TOP`` nvcc reports in ``--dryrun`` (nothing is compiled), or None."""
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "empty.cu")
        open(src, "w").close()
        try:
            proc = subprocess.run([nvcc, "--dryrun", "-c", src, "-o", os.path.join(tmp, "empty.o")],
                                  capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.SubprocessError):
            return None
    # nvcc prints its dry-run lines on stderr; read both in case a wrapper redirects them.
    for line in (proc.stderr + "\n" + proc.stdout).splitlines():
        m = re.match(r"#\$ TOP=(.+?)\s*$", line)
        if m:
            return os.path.normpath(m.group(1).strip().strip('"'))
    return None


def find_cuda_home(env: Mapping[str, str] | None = None,
                   which: Callable[[str], str | None] = shutil.which) -> str | None:
    """The CUDA toolkit root to build against.

    Order: ``$CUDA_HOME`` (or ``$CUDA_PATH``) as given, untouched; else, for the ``nvcc`` on
    PATH, the parent of its real (symlink-resolved) folder when that is a toolkit; else the
    ``TOP`` that nvcc's ``--dryrun`` reports. Returns None when no nvcc is on PATH (no CUDA
    build). Raises :class:`CudaHomeError`, saying to set CUDA_HOME, when nvcc is there but its
    toolkit cannot be found.
    """
    env = os.environ if env is None else env
    preset = env.get("CUDA_HOME") or env.get("CUDA_PATH")
    if preset:
        return preset
    nvcc = which("nvcc")
    if nvcc is None:
        return None
    real = os.path.realpath(nvcc)
    guess = os.path.dirname(os.path.dirname(real))
    if _is_toolkit(guess):
        return guess
    top = _top_from_dryrun(nvcc)
    if top and _is_toolkit(top):
        return top
    raise CudaHomeError(
        f"nvcc was found at {nvcc} but the CUDA toolkit it belongs to was not "
        f"(no include/cuda_runtime.h under {guess}"
        + (f" nor under {top}, the TOP nvcc --dryrun reports" if top else
           ", and nvcc --dryrun reported no TOP")
        + "). Set CUDA_HOME to the toolkit root (the folder holding bin/nvcc and "
          "include/cuda_runtime.h), or ESR_SKIP_CUDA_BUILD=1 to build without the CUDA extension.")
