"""How the package times a forward: per-call milliseconds of a callable after warm-up calls,
between CUDA events on a GPU (the time of the work it queued, in stream order), perf_counter on
CPU. ``esr selftest``'s timings and ``benchmarks/gpu_session_timing.py`` both use it."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def time_ms(fn: Callable[[], object], device: str | torch.device, warmup: int, iters: int) -> list[float]:
    """The time of each of ``iters`` calls of ``fn``, in ms, after ``warmup`` untimed calls."""
    on_cuda = torch.device(device).type == "cuda"
    for _ in range(warmup):
        fn()
    if on_cuda:
        torch.cuda.synchronize()
    out = []
    for _ in range(iters):
        if on_cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return out


def median_ms(fn: Callable[[], object], device: str | torch.device, warmup: int, iters: int) -> float:
    """The median of ``time_ms``."""
    return statistics.median(time_ms(fn, device, warmup, iters))
