"""Eager PyTorch channels_last float32 against the fused native CPU backend, interleaved in one
process (each round runs both, in turn, so drift of a shared machine hits both alike): the
median time of each and their ratio, per model. Cap torch and force the level together to
measure as on a CPU with only that ISA level, e.g. AVX2:

    ESR_CPU_ISA=avx2 ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 \\
        python -m benchmarks.eager_vs_fused --size 256 256 --rounds 10 --threads 2
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import esr_kernels
import esr_models


def _timed(model, x) -> float:
    with torch.inference_mode():
        start = time.perf_counter()
        model(x)
        return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("H", "W"))
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=list(esr_models.MODEL_NAMES))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"cpu_isa={esr_kernels.available_backends()['cpu_isa']} threads={args.threads}", flush=True)
    for name in args.models:
        eager = esr_models.load(name).to(memory_format=torch.channels_last)
        fused = esr_models.load(name, fused=True, backend="cpu")
        x = torch.rand(1, 3, *args.size).contiguous(memory_format=torch.channels_last)
        for _ in range(2):  # warm-up: packing caches, buffer cache, oneDNN primitives
            _timed(eager, x), _timed(fused, x)
        times = [(_timed(eager, x), _timed(fused, x)) for _ in range(args.rounds)]
        te, tf = statistics.median(t[0] for t in times), statistics.median(t[1] for t in times)
        print(f"{name} {args.size[0]}x{args.size[1]}: eager_cl {te * 1e3:.1f} ms, fused {tf * 1e3:.1f} ms, "
              f"eager / fused {te / tf:.2f}x", flush=True)


if __name__ == "__main__":
    main()
