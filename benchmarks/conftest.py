"""Benchmark configuration.

Default (CI's share): 256x256 only, few rounds. ``ESR_BENCH_FULL=1`` adds 540x960 (qHD->4K)
and more rounds; on a CUDA device both sizes always run.

For smoke runs (proving the harness end to end in a minute, not measuring):
``ESR_BENCH_MODELS=ifadnet,rlfn`` limits the models, ``ESR_BENCH_SIZES=64x64`` replaces the
sizes (any HxW), ``ESR_BENCH_ROUNDS=2`` the paired benchmark's rounds. The JSON's
``machine_info["esr_cpu"]`` says which CPU ISA level ran (``benchmarks.machine``).
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


def bench_models() -> list[str]:
    """The models to benchmark: all, or the ones ESR_BENCH_MODELS names."""
    import esr_models

    names = [n.strip() for n in os.environ.get("ESR_BENCH_MODELS", "").split(",") if n.strip()]
    unknown = sorted(set(names) - set(esr_models.MODEL_NAMES))
    if unknown:
        raise ValueError(f"ESR_BENCH_MODELS: unknown models {unknown}; expected {list(esr_models.MODEL_NAMES)}")
    return names or list(esr_models.MODEL_NAMES)


def bench_sizes(sizes: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """``sizes`` as the sweep selects them (256x256, plus the rest with a full sweep), or the
    HxW sizes ESR_BENCH_SIZES lists instead."""
    env = os.environ.get("ESR_BENCH_SIZES", "")
    if env.strip():
        out = {}
        for s in env.split(","):
            h, _, w = s.strip().partition("x")
            out[s.strip()] = (int(h), int(w))
        return out
    return {k: v for k, v in sizes.items() if k == "256x256" or full_sweep()}


def sweep_reason(provider_name: str, device: torch.device) -> str | None:
    """Why the sweep leaves ``provider_name`` out (None: it runs). torch.compile on a CPU
    compiles for tens of seconds per model and shape on 2 cores (and five more shapes for the
    Set5 check), too slow for CI's short share: it runs with ESR_BENCH_FULL=1."""
    if provider_name.startswith("compile") and device.type == "cpu" and not full_sweep():
        return f"{provider_name}: torch.compile on CPU runs with ESR_BENCH_FULL=1 (its compile time)"
    if provider_name in ("fused_bf16_brgemm", "fused_bf16_own") and not full_sweep():
        return f"{provider_name}: the brgemm A/B (issue 29) runs with ESR_BENCH_FULL=1 (CI's time)"
    return None


def bench_rounds(default: int) -> int:
    return int(os.environ.get("ESR_BENCH_ROUNDS", default))


def pytest_benchmark_update_machine_info(config, machine_info):
    """Every benchmark JSON records the CPU, its ISA levels and PyTorch's (benchmarks.machine)."""
    from benchmarks.machine import cpu_record

    machine_info["esr_cpu"] = cpu_record()


@pytest.fixture(scope="session")
def bench_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def pytest_collection_modifyitems(config, items):
    from esr_models.arch import weights

    try:
        for name in weights.CHECKPOINTS:
            weights.resolve(name, allow_download=False)
    except weights.WeightsError as exc:
        skip = pytest.mark.skip(reason=f"no weights (set ESR_WEIGHTS_DIR): {exc}")
        for item in items:
            item.add_marker(skip)
