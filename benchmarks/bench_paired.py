"""Fused vs the baselines, interleaved: each round runs every provider once, in turn, so that
slow drift of the machine (large on shared VMs) hits all of them alike. The benchmark's own
timing is one whole round. Reported per model and size in ``extra_info["providers"]``, per
provider:

- ``median_ms``; ``fused_speedup``: the median over rounds of its time / the fused_fp32 time
  (> 1: the fused path is that much faster); ``bf16_speedup``: the same against fused_bf16,
  when that provider ran;
- ``info``: what actually ran (backend, dtype, layout, the precision OpenVINO chose, the
  torch.compile options, warnings such as a fallback to the reference);
- ``quality``: its Set5 PSNR change from the float32 reference (``benchmarks.quality``; once
  per provider and model, after the timing, so compiling for the Set5 sizes costs no timed
  round).

``extra_info["cpu"]`` (and every JSON's ``machine_info["esr_cpu"]``) says which CPU ISA level ran.

    pytest benchmarks/bench_paired.py --benchmark-only -s \\
        --benchmark-json benchmarks/results/cpu-paired-<cpu>-<date>.json
    python benchmarks/plot_frontier.py benchmarks/results/cpu-paired-<cpu>-<date>.json

(benchmarks/README.md: the full command, the smoke-run variables.)
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from benchmarks.conftest import bench_models, bench_rounds, bench_sizes, device_name, sweep_reason
from benchmarks.machine import cpu_record
from benchmarks.providers import PROVIDERS, build_runner
from benchmarks.quality import provider_psnr_change

SIZES = bench_sizes({"256x256": (256, 256), "540x960": (540, 960)})
# The fused provider (the denominator) first, then what it is compared with, per device type.
PAIRINGS = {
    "cpu": ["fused_fp32", "fused_bf16", "fused_bf16_brgemm", "fused_bf16_own",
            "eager_fp32_channels_last", "compile_fp32", "compile_bf16",
            "onnxruntime_fp32", "openvino_fp32", "openvino_default"],
    "cuda": ["fused_fp16_cuda_graph", "fused_fp16", "eager_fp16_channels_last", "compile_fp16"],
}
# The second denominator: the bf16 fused path against the other reduced-precision providers.
BF16_BASE = "fused_bf16"


def _ratios(times: dict[str, list[float]], base: str) -> dict[str, float]:
    """Per provider, the median over rounds of its time / ``base``'s time in the same round."""
    b = times[base]
    return {n: statistics.median(x / y for x, y in zip(t, b)) for n, t in times.items()}


def _summary(times, runners, model_name: str, device) -> dict:
    """Per provider: median ms, the ratios, what ran and its Set5 PSNR change."""
    names = list(times)
    fused = _ratios(times, names[0])
    bf16 = _ratios(times, BF16_BASE) if BF16_BASE in times else {}
    out = {}
    for n in names:
        quality = (provider_psnr_change(n, model_name, runners[n].forward) if device.type == "cpu"
                   else {"skipped": "the Set5 check runs for the CPU pairing"})
        out[n] = {"median_ms": 1e3 * statistics.median(times[n]), "fused_speedup": fused[n],
                  **({"bf16_speedup": bf16[n]} if bf16 else {}), "info": runners[n].info, "quality": quality}
    return out


def _print(model_name: str, size: str, result: dict) -> None:
    print(f"\n{model_name} {size}:")
    for n, r in result.items():
        q = r["quality"]
        dq = f"{q['psnr_change_db']:+.4f} dB" if "psnr_change_db" in q else q.get("skipped", "?")
        extra = f", bf16 {r['bf16_speedup']:.2f}x" if "bf16_speedup" in r else ""
        ran = r["info"].get("precision") or f"{r['info'].get('backend')}/{r['info'].get('dtype')}"
        print(f"  {n:<26} {r['median_ms']:8.1f} ms  fused {r['fused_speedup']:.2f}x{extra}  "
              f"Set5 {dq}  [{ran}]")


@pytest.mark.parametrize("size", list(SIZES))
@pytest.mark.parametrize("model_name", bench_models())
def test_fused_vs_baselines_interleaved(benchmark, bench_device, size, model_name):
    by_name = {p.name: p for p in PROVIDERS}
    names = PAIRINGS[bench_device.type]
    fused = by_name[names[0]]
    reason = fused.unavailable_reason(bench_device)
    if reason:
        pytest.skip(reason)
    available = [n for n in names if by_name[n].unavailable_reason(bench_device) is None
                 and sweep_reason(n, bench_device) is None]
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

    rounds = bench_rounds(20 if bench_device.type == "cuda" else (5 if size != "256x256" else 10))
    benchmark.pedantic(one_round, rounds=rounds, iterations=1, warmup_rounds=0)
    result = _summary(times, runners, model_name, bench_device)
    benchmark.extra_info.update({"model": model_name, "size": size, "batch": 1, "fused": fused.name,
                                 "device": device_name(bench_device), "providers": result,
                                 **({"cpu": cpu_record()} if bench_device.type == "cpu" else {})})
    _print(model_name, size, result)
    f = times[fused.name]
    assert len(f) == rounds and all(t > 0 for t in f)
