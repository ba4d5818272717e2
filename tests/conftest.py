"""Shared fixtures and device/data gating (never at import time: through markers and hooks).

Markers (declared in pyproject.toml): ``shared`` (needs ../shared), ``gpu`` (a CUDA device),
``triton`` (triton installed), ``native_cpu`` (the native CPU extension built); a test whose
need is not met is skipped with the reason. Fixtures: ``run_esr`` (the ``esr`` command in a
subprocess), ``one_thread`` (one intra-op thread for a module), the data and device ones below.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch


def _shared_dir() -> Path | None:
    """This repository's test data, ``../shared`` beside the checkout (or $ESR_SHARED_DIR).
    Product code never looks for it: the tests hand its weights over through ESR_WEIGHTS_DIR,
    as a user would, which subprocesses (the CLI tests) inherit."""
    env = os.environ.get("ESR_SHARED_DIR")
    candidate = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return candidate if candidate.is_dir() else None


SHARED = _shared_dir()

# The name a model's files have in ../shared (golden/<tag>_<input>.npz, expected_psnr.json)
# where it is not the model name: the SPAN files are named after their widths.
SHARED_TAGS = {"span": "span28", "spantiny": "spantiny26"}


def _shared_tag(name: str) -> str:
    return SHARED_TAGS.get(name, name)


def pytest_configure(config):
    """Environment for the whole session, set before any test module is imported."""
    # A shell starts a background job (`cmd &` without job control, e.g. `nohup .ci/run &`) with
    # SIGINT ignored, and Python then keeps it ignored, as do the processes it starts: the tests
    # that send Ctrl-C to an `esr` child, or check that a handler is restored, need Python's
    # interactive default. (xdist's workers are started after this, with it.)
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Triton reads this once, at its first import: without a GPU, its kernels can only run on
    # CPU tensors through the interpreter. Setting it selects nothing and skips nothing by itself.
    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    if SHARED is not None and (SHARED / "weights").is_dir():
        os.environ.setdefault("ESR_WEIGHTS_DIR", str(SHARED / "weights"))


def pytest_collection_modifyitems(config, items):
    skip_shared = pytest.mark.skip(reason=f"../shared test data not found (looked for "
                                          f"{Path(__file__).resolve().parents[2] / 'shared'}; set ESR_SHARED_DIR)")
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "shared" in item.keywords and SHARED is None:
            item.add_marker(skip_shared)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)
        if "triton" in item.keywords and importlib.util.find_spec("triton") is None:
            item.add_marker(pytest.mark.skip(reason="triton is not installed (pip install -e '.[triton]')"))
        if "native_cpu" in item.keywords and importlib.util.find_spec("esr_kernels._C_cpu") is None:
            item.add_marker(pytest.mark.skip(reason="native CPU extension not built "
                                                    "(pip install --no-build-isolation -e .)"))


@pytest.fixture(scope="session")
def shared() -> Path:
    assert SHARED is not None
    return SHARED


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def models():
    """Reference models, loaded once per session."""
    import esr_models

    if SHARED is None and not os.environ.get("ESR_WEIGHTS_DIR"):
        pytest.skip("no weights: ../shared absent and ESR_WEIGHTS_DIR unset")
    return {name: esr_models.load(name) for name in esr_models.MODEL_NAMES}


@pytest.fixture(scope="session")
def shared_tag():
    """shared_tag(model name) -> its name in ../shared's golden outputs and expected_psnr.json."""
    return _shared_tag


@pytest.fixture(scope="session")
def golden(shared):
    """The one golden helper: golden(name, inp, device="cpu") -> (lr, sr), the upstream model's
    input (1, 3, h, w) float in [0, 1] and its output (1, 3, 4h, 4w), from
    ../shared/golden/<name>_<inp>.npz."""
    import numpy as np

    def load(name: str, inp: str, device="cpu"):
        g = np.load(shared / "golden" / f"{_shared_tag(name)}_{inp}.npz")
        x = torch.from_numpy(g["lr"]).permute(2, 0, 1)[None].float().to(device) / 255.0
        return x, torch.from_numpy(g["sr"])[None].to(device)

    return load


@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where kernel tests run: the GPU when there is one, else CPU under Triton's interpreter."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def on_gpu(device) -> bool:
    return device.type == "cuda"


def _run_esr(*args, env: dict[str, str] | None = None, cwd=None, timeout: float = 600,
             check: int | None = None) -> subprocess.CompletedProcess:
    """``esr ARGS`` as users run it (``python -m esr_models.cli`` in a subprocess, this
    environment plus ``env``), output captured as text. ``check``: the exit status it must
    have (AssertionError with its stderr otherwise); None: any."""
    proc = subprocess.run([sys.executable, "-m", "esr_models.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if check is not None and proc.returncode != check:
        raise AssertionError(f"esr {args}: exit {proc.returncode}, expected {check}:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def run_esr():
    """The ``esr`` command in a subprocess: ``run_esr(*args, env=None, cwd=None, timeout=600,
    check=None)`` -> CompletedProcess (see ``_run_esr``)."""
    return _run_esr


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``):
    on a small machine shared with other jobs, OpenMP's spinning threads make small convs
    10-50x slower than a single thread. Restored afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _random_png(path: Path, seed: int = 0, size=(20, 20)) -> Path:
    """An RGB PNG of ``size`` (height, width) with random pixels from ``seed``; its folder is made."""
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


@pytest.fixture(scope="session")
def random_png():
    """``random_png(path, seed=0, size=(20, 20))`` -> path (see ``_random_png``)."""
    return _random_png
