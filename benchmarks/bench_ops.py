"""Each op of each fused backend against its reference (``esr_kernels.reference``, the same
functions the tests use), at the size the models run them at 256x256, interleaved: every
round times the backend op and the reference once each. The backend's answer is checked
against the reference before anything is timed.

    pytest benchmarks/bench_ops.py --benchmark-only [-s]   # -s prints the table
"""
from __future__ import annotations

import dataclasses
import statistics
import time

import pytest
import torch

from benchmarks.conftest import device_name
from esr_kernels import reference as R
from esr_kernels import spec
from esr_kernels.op_args import ConvEpilogue, ConvGeometry
from esr_kernels.packing import fold_esa, pack_esa
from esr_kernels.policy import backend_unavailable_reason, make_backend
from esr_models.arch.layers import ESA

H = W = 256
TOL = 1e-4  # float32, random weights of unit scale (the model-level bar is on the tests)


def _op_cases(kernels, device):
    """{op: (backend call, reference call)} at a model's channel counts."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    x48, x36 = rand(1, 48, H, W), rand(1, 36, H, W)
    w3, b3 = rand(48, 48, 3, 3, scale=1 / 20), rand(48, scale=0.1)
    gelu = ConvEpilogue(act=spec.ACT_GELU)
    conv = kernels.pack_conv(w3, b3, gelu)
    pw, dw, db = rand(36, 36, 1, 1, scale=1 / 6), rand(36, 1, 3, 3, scale=1 / 3), rand(36, scale=0.1)
    bsb = kernels.pack_bsb(pw, dw, db)
    esa_module = ESA(48, 16).to(device)
    esa_w = fold_esa(esa_module)
    esa = kernels.pack_esa(esa_w)
    esa_args = pack_esa(dataclasses.replace(esa_w, dtype=torch.float32))
    lw, lb = rand(16, 48, 1, 1, scale=1 / 7), rand(16, scale=0.1)
    la = kernels.pack_la_reduce(lw, lb)
    return {
        "conv3x3_gelu_48": (lambda: kernels.conv(x48, conv),
                            lambda: R.conv(x48, R.pack_conv_weight(w3), b3, ConvGeometry(48, 48, 3, 1, 1), gelu)),
        "bsb_36": (lambda: kernels.bsb(x36, bsb, x36),
                   lambda: R.bsb(x36, R.pack_conv_weight(pw), dw, db, x36)),
        "esa_48": (lambda: kernels.esa(x48, esa, x48),
                   lambda: R.esa(x48, esa_args, x48)),
        "la_reduce_48_16": (lambda: kernels.la_reduce(x48, la),
                            lambda: R.la_reduce(x48, R.pack_conv_weight(lw), lb)),
    }


OPS = ["conv3x3_gelu_48", "bsb_36", "esa_48", "la_reduce_48_16"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("backend", ["cpu", "triton", "cuda"])
def test_op_vs_reference_interleaved(benchmark, bench_device, backend, op):
    reason = backend_unavailable_reason(backend, bench_device)
    if reason:
        pytest.skip(reason)
    torch.set_grad_enabled(False)
    fused, ref = _op_cases(make_backend(backend, bench_device), bench_device)[op]
    out, expected = fused(), ref()
    assert out.shape == expected.shape and out.dtype == expected.dtype
    assert (out.float() - expected.float()).abs().max().item() <= TOL
    sync = torch.cuda.synchronize if bench_device.type == "cuda" else (lambda: None)
    times = {"fused": [], "reference": []}

    def one_round():
        for name, run in (("fused", fused), ("reference", ref)):
            start = time.perf_counter()
            run()
            sync()
            times[name].append(time.perf_counter() - start)

    one_round()  # warm-up
    times = {"fused": [], "reference": []}
    benchmark.pedantic(one_round, rounds=10, iterations=1, warmup_rounds=0)
    speedup = statistics.median(r / f for f, r in zip(times["fused"], times["reference"]))
    benchmark.extra_info.update({"op": op, "backend": backend, "size": f"{H}x{W}", "device": device_name(bench_device),
                                 "fused_ms": 1e3 * statistics.median(times["fused"]),
                                 "reference_ms": 1e3 * statistics.median(times["reference"]),
                                 "fused_speedup": speedup})
    print(f"\n{backend} {op}: fused {1e3 * statistics.median(times['fused']):.2f} ms, reference "
          f"{1e3 * statistics.median(times['reference']):.2f} ms ({speedup:.2f}x)")
    assert len(times["fused"]) == 10 and all(t > 0 for t in times["fused"])
