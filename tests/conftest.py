"""Shared fixtures and device/data gating (never at import time: through markers)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from esr_models.weights import shared_dir

SHARED = shared_dir()


def pytest_collection_modifyitems(config, items):
    skip_shared = pytest.mark.skip(reason=f"../shared test data not found (looked for "
                                          f"{Path(__file__).resolve().parents[2] / 'shared'}; set ESR_SHARED_DIR)")
    skip_gpu = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "shared" in item.keywords and SHARED is None:
            item.add_marker(skip_shared)
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


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
