"""Fused vs the baselines, interleaved: each round runs every provider once, in turn, so that
slow drift of the machine (large on shared VMs) hits all of them alike. Reported per model and
size in extra_info: each provider's median ms and the median over rounds of its time divided
by the fused time (the speedup of the fused path over it). The benchmark's own timing is one
whole round.

    pytest benchmarks/bench_paired.py --benchmark-only [-s]   # -s prints the table
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

import esr_models
from benchmarks.conftest import device_name, full_sweep
from benchmarks.providers import PROVIDERS, build_runner

SIZES = {"256x256": (256, 256), "540x960": (540, 960)}
# The fused provider first, then what it is compared with, per device type.
PAIRINGS = {
    "cpu": ["fused_fp32", "eager_fp32_channels_last", "onnxruntime_fp32", "openvino_fp32"],
    "cuda": ["fused_fp16_cuda_graph", "fused_fp16", "eager_fp16_channels_last", "compile_fp16"],
}


def _sizes():
    return [s for s in SIZES if s == "256x256" or full_sweep()]


@pytest.mark.parametrize("size", _sizes())
@pytest.mark.parametrize("model_name", esr_models.MODEL_NAMES)
def test_fused_vs_baselines_interleaved(benchmark, bench_device, size, model_name):
    by_name = {p.name: p for p in PROVIDERS}
    names = PAIRINGS[bench_device.type]
    fused = by_name[names[0]]
    reason = fused.unavailable_reason(bench_device)
    if reason:
        pytest.skip(reason)
    available = [n for n in names if by_name[n].unavailable_reason(bench_device) is None]
    h, w = SIZES[size]
    torch.set_grad_enabled(False)
    runners = {n: build_runner(by_name[n], model_name, (1, 3, h, w), bench_device) for n in available}
    for run in runners.values():  # warm-up: lazy init, autotuning, compilation, buffer caches
        run()
        run()
    times = {n: [] for n in available}

    def one_round():
        for n, run in runners.items():  # each runner synchronises the device before returning
            start = time.perf_counter()
            run()
            times[n].append(time.perf_counter() - start)

    rounds = 20 if bench_device.type == "cuda" else (5 if size != "256x256" else 10)
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    f = times[fused.name]
    result = {n: {"median_ms": 1e3 * statistics.median(t),
                  "fused_speedup": statistics.median(a / b for a, b in zip(t, f))} for n, t in times.items()}
    benchmark.extra_info.update({"model": model_name, "size": size, "batch": 1, "fused": fused.name,
                                 "device": device_name(bench_device), "providers": result})
    print(f"\n{model_name} {size}: " + ", ".join(
        f"{n} {r['median_ms']:.1f} ms (fused {r['fused_speedup']:.2f}x)" for n, r in result.items()))
    assert len(f) == rounds and all(t > 0 for t in f)
