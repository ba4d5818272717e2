"""The bf16 GEMM A/B of issue 29, interleaved in one process: per model, fused bf16 with the own
micro-kernel (3x3 convs Winograd), with oneDNN's brgemm and Winograd, with brgemm and the direct
3x3 convs (what "auto" runs on an AMX CPU), and fused float32; best of 3 per round, the order
reversed every other round, medians over rounds and the median of per-round ratios.

    python -m benchmarks.cpu_gemm_ab [--size 256x256] [--rounds 5] [models...]

Say which CPU (``lscpu``) beside any figure: the ranking differs between an AMD EPYC (no AMX)
and an Intel Xeon with AMX."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import esr_kernels.cpu_backend as cpu_backend
import esr_models
from esr_kernels.extensions import native_ops

VARIANTS = {  # name: (bf16 GEMM kind for set_bf16_gemm, direct 3x3) or None for float32
    "own": (0, False), "brgemm_winograd": (1, False), "brgemm_direct": (1, True), "fp32": None}


def _best_ms(fn, reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def run(name: str, size: tuple[int, int], rounds: int) -> dict[str, list[float]]:
    ops = native_ops("_C_cpu")
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    models = {torch.bfloat16: esr_models.load(name, fused=True, dtype=torch.bfloat16),
              torch.float32: esr_models.load(name, fused=True)}
    before, direct = int(ops.bf16_gemm()), cpu_backend.bf16_direct_3x3
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    try:
        with torch.inference_mode():
            for r in range(rounds + 1):  # round 0 warms up (packs, buffer cache), not kept
                for v in (list(VARIANTS) if r % 2 else list(VARIANTS)[::-1]):
                    setting = VARIANTS[v]
                    if setting is None:
                        ms = _best_ms(lambda: models[torch.float32](x))
                    else:
                        ops.set_bf16_gemm(setting[0])
                        cpu_backend.bf16_direct_3x3 = (lambda on=setting[1]: on)
                        xb = x.bfloat16()
                        ms = _best_ms(lambda: models[torch.bfloat16](xb))
                    if r:
                        times[v].append(ms)
    finally:
        ops.set_bf16_gemm(before)
        cpu_backend.bf16_direct_3x3 = direct
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("models", nargs="*", default=["ifadnet", "pfdnlite", "rlfn", "span"])
    ap.add_argument("--size", default="256x256")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    for name in args.models:
        t = run(name, size, args.rounds)
        med = {v: round(statistics.median(ms), 1) for v, ms in t.items()}
        ratio = lambda a, b: statistics.median(x / y for x, y in zip(t[a], t[b]))  # noqa: E731
        print(f"{name} {args.size}: {med} ms; own/brgemm_winograd {ratio('own', 'brgemm_winograd'):.2f}, "
              f"brgemm_winograd/brgemm_direct {ratio('brgemm_winograd', 'brgemm_direct'):.2f}, "
              f"fp32/brgemm_direct {ratio('fp32', 'brgemm_direct'):.2f}", flush=True)


if __name__ == "__main__":
    main()
