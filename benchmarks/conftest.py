"""Benchmark configuration.

Default (CI's share): 256x256 only, few rounds. ``ESR_BENCH_FULL=1`` adds 540x960 (qHD->4K)
and more rounds; on a CUDA device both sizes always run.
"""
from __future__ import annotations

import os

import pytest
import torch


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
    from esr_models.weights import shared_dir

    if shared_dir() is None and not os.environ.get("ESR_WEIGHTS_DIR"):
        skip = pytest.mark.skip(reason="no weights: ../shared absent and ESR_WEIGHTS_DIR unset")
        for item in items:
            item.add_marker(skip)
