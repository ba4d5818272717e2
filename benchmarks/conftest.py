"""Benchmark configuration.

Default (CI's share): 256x256 only, few rounds. ``ESR_BENCH_FULL=1`` adds 540x960 (qHD->4K)
and more rounds; on a CUDA device both sizes always run.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# This repository's test data (../shared beside the checkout), handed over as a user would.
_SHARED_WEIGHTS = Path(__file__).resolve().parents[2] / "shared" / "weights"
if _SHARED_WEIGHTS.is_dir():
    os.environ.setdefault("ESR_WEIGHTS_DIR", str(_SHARED_WEIGHTS))


def full_sweep() -> bool:
    return os.environ.get("ESR_BENCH_FULL") == "1" or torch.cuda.is_available()


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def pytest_collection_modifyitems(config, items):
    from esr_models import weights

    try:
        for name in weights.CHECKPOINTS:
            weights.resolve(name, allow_download=False)
    except weights.WeightsError as exc:
        skip = pytest.mark.skip(reason=f"no weights (set ESR_WEIGHTS_DIR): {exc}")
        for item in items:
            item.add_marker(skip)
