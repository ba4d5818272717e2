"""End-to-end model throughput, per model x input size x provider.

    pytest benchmarks --benchmark-only                   # CI's short share (256x256)
    ESR_BENCH_FULL=1 pytest benchmarks --benchmark-only  # + 540x960, more rounds

Each record's extra_info has device, dtype, layout, provider and throughput in output
megapixels per second (x4 output: 16 * H * W pixels), and ``ran``: what actually ran
(``Runner.info``: backend, dtype, OpenVINO's precision, torch.compile options). The smoke-run
variables of conftest.py (ESR_BENCH_MODELS, ESR_BENCH_SIZES) apply here too.
"""
from __future__ import annotations

import pytest
import torch

from benchmarks.conftest import bench_models, bench_sizes, device_name, full_sweep, sweep_reason
from benchmarks.providers import PROVIDERS, build_runner

SIZES = bench_sizes({"256x256": (256, 256), "540x960": (540, 960)})


@pytest.mark.parametrize("provider", PROVIDERS, ids=lambda p: p.name)
@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("model_name", bench_models())
def test_model_throughput(benchmark, bench_device, provider, size, model_name):
    reason = provider.unavailable_reason(bench_device) or sweep_reason(provider.name, bench_device)
    if reason:
        pytest.skip(reason)
    h, w = SIZES[size]
    torch.set_grad_enabled(False)
    run = build_runner(provider, model_name, (1, 3, h, w), bench_device)
    for _ in range(2):  # warm-up: lazy init, autotuning, compilation stay out of the numbers
        run()
    rounds = 20 if bench_device.type == "cuda" else (7 if full_sweep() else 2)
    benchmark.pedantic(run, rounds=rounds, iterations=1, warmup_rounds=0)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({
        "model": model_name, "provider": provider.name, "size": size, "batch": 1,
        "device": device_name(bench_device), "dtype": str(provider.dtype).removeprefix("torch."),
        "layout": "channels_last" if provider.channels_last else "NCHW",
        "output_megapixels_per_s": 16 * h * w / 1e6 / median, "ran": run.info,
    })
