"""Shared fixtures and device/data gating (never at import time: through markers)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

# Triton reads this once, at its first import: without a GPU, its kernels can only run on CPU
# tensors through the interpreter. Setting it selects nothing and skips nothing by itself.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")



def _shared_dir() -> Path | None:
    """This repository's test data, ``../shared`` beside the checkout (or $ESR_SHARED_DIR).
    Product code never looks for it: the tests hand its weights over through ESR_WEIGHTS_DIR,
    as a user would, which subprocesses (the CLI tests) inherit."""
    env = os.environ.get("ESR_SHARED_DIR")
    candidate = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    return candidate if candidate.is_dir() else None


SHARED = _shared_dir()
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
def golden(shared):
    """The one golden helper: golden(name, inp, device="cpu") -> (lr, sr), the upstream model's
    input (1, 3, h, w) float in [0, 1] and its output (1, 3, 4h, 4w), from
    ../shared/golden/<name>_<inp>.npz."""
    import numpy as np

    def load(name: str, inp: str, device="cpu"):
        g = np.load(shared / "golden" / f"{name}_{inp}.npz")
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
