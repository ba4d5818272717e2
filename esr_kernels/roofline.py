"""Memory-traffic and roofline model of a fused model against its eager reference (the models
are given: ``esr roofline``, in esr_models/cli/roofline.py, loads them). A model, not a
measurement.

What is counted, per kernel launch: the bytes of every tensor argument it reads (each read
once) and of every tensor it writes, and its multiply-accumulates (MACs) as the kernel executes
them (recomputation included). Each tensor is counted once per launch: this is a lower bound
that ignores halo re-reads between tiles, cache misses and write-allocate traffic, on both sides.
Elementwise arithmetic is not counted as compute (these ops are bandwidth-bound).

How launches are found: the model runs under ``FakeTensorMode`` (no memory, no arithmetic:
540x960 costs nothing) inside a ``TorchDispatchMode`` that sees every op:

- fused model (``backend="triton"``): each ``torch.ops.esr.*`` call is one Triton launch,
  except ``esr::esa``, which is three (``triton/esa.py``: down = reduce 1x1 recomputed per
  3x3/2 tap, writing the float32 ``d``; low = max-pool + 3x3 on ``d``, writing the float32
  ``low``; out = skip 1x1 + bilinear(low) + expand 1x1 + gate over the full image); any aten op
  the fused model still makes counts as in eager;
- eager reference: every aten op reads its tensor inputs and writes its outputs; views and
  allocations (``empty*``) move nothing; convolutions' MACs are N*C_out*H_out*W_out*C_in/g*k*k.

Modelled time of a launch on a device: max(bytes / bandwidth, 2 * MACs / peak fp16 FLOP/s);
a model's time is the sum over its launches (launch overheads and occupancy are not modelled).
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING
from unittest import mock

from .spec import pooled_size

if TYPE_CHECKING:
    from .op_args import ConvGeometry

DEVICES = {  # bytes/s, dense fp16 FLOP/s (tensor cores; vendor datasheets)
    "H100 SXM": {"bandwidth": 3.35e12, "fp16_flops": 989e12},
    "RTX 3090": {"bandwidth": 936e9, "fp16_flops": 71e12},
}
TARGET_RATIO = 1 / 3  # issue #10: fused traffic at most a third of eager's
_ALLOC_PREFIXES = ("empty", "new_empty", "zeros_like", "full_like")


@dataclass
class Launch:
    """One kernel launch: what it is, bytes read and written, multiply-accumulates."""
    name: str
    read: int
    written: int
    macs: int = 0

    @property
    def bytes(self) -> int:
        return self.read + self.written


def nbytes(t) -> int:
    """Bytes of the elements a tensor (or view) covers."""
    return t.numel() * t.element_size()


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += nbytes(t)
    return total


# ---------------------------------------------------------------- fused (esr::) launches
def conv_macs(x_shape, w_packed_shape, g: ConvGeometry) -> int:
    """MACs of esr::conv: every output pixel, c_conv channels, over the packed weight's C_in."""
    n, _, h, w = x_shape
    c_in = w_packed_shape[1]
    ho, wo = (h + 2 * g.padding - g.ksize) // g.stride + 1, (w + 2 * g.padding - g.ksize) // g.stride + 1
    return n * ho * wo * g.c_conv * c_in * g.ksize * g.ksize


def esr_launches(op: str, args: tuple, out) -> list[Launch]:
    """The launches of one torch.ops.esr call (see the module docstring)."""
    import torch

    from .op_args import CONV, ESA

    x = args[0]
    n, c, h, w = x.shape
    read_all = _unique_bytes(_tensors(args))
    if op == "conv":
        _, wp, _, geometry, _ = CONV.split(args)
        return [Launch("esr::conv", read_all, nbytes(out), conv_macs(x.shape, wp.shape, geometry))]
    if op == "bsb":
        return [Launch("esr::bsb", read_all, nbytes(out), n * h * w * (c * c + 9 * c))]
    if op == "la_reduce":
        cr = args[2].shape[0]
        hp, wp_ = out.shape[-2:]
        # the 1x1 reduction is computed for every tap of each 7x7 window (pooled in registers)
        return [Launch("esr::la_reduce", read_all, nbytes(out), n * hp * wp_ * 49 * c * cr)]
    if op == "esa":
        x, e, residual = ESA.split(args)
        cr = e.reduce_w.shape[-1]  # the packed width: esr::esa allocates d and low with it (16 here)
        h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        hp, wp_ = pooled_size(h2), pooled_size(w2)
        f32 = torch.finfo(torch.float32).bits // 8
        d_bytes, low_bytes = n * cr * h2 * w2 * f32, n * cr * hp * wp_ * f32
        down = Launch("esr::esa/down", _unique_bytes([x, e.reduce_w, e.reduce_b, e.down_w, e.down_b]), d_bytes,
                      n * h2 * w2 * 9 * (c * cr + cr * cr))
        low = Launch("esr::esa/low", d_bytes + _unique_bytes([e.low_w, e.low_b]), low_bytes,
                     n * hp * wp_ * 9 * cr * cr)
        tail_in = [x, e.skip_w, e.skip_b, e.expand_w, e.expand_b] + ([residual] if residual is not None else [])
        tail = Launch("esr::esa/out", _unique_bytes(tail_in) + low_bytes, nbytes(out), n * h * w * 2 * c * cr)
        return [down, low, tail]
    raise KeyError(f"esr::{op}: no traffic rule")


# ---------------------------------------------------------------- aten launches
def aten_launch(func, args, kwargs, out) -> Launch | None:
    """One eager op's traffic; None for views and allocations (they move no data)."""
    schema = func._schema
    name = schema.name.split("::")[-1]
    if name.startswith(_ALLOC_PREFIXES) or name in ("detach", "lift_fresh", "alias"):
        return None
    rets = schema.returns
    if rets and all(r.alias_info is not None and not r.alias_info.is_write for r in rets):
        return None  # a view
    ins = list(_tensors(args)) + list(_tensors(list((kwargs or {}).values())))
    outs = list(_tensors(out))
    macs = 0
    if name in ("convolution", "_convolution", "conv2d"):
        weight, groups = args[1], (args[8] if len(args) > 8 else 1)
        o = outs[0]
        macs = o.numel() * (weight.shape[1]) * weight.shape[2] * weight.shape[3]
        del groups  # weight.shape[1] is already C_in / groups
    elif name in ("mm", "bmm", "addmm"):
        a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
        macs = a.numel() * b.shape[-1]
    return Launch(f"aten::{name}", _unique_bytes(ins), _unique_bytes(outs), int(macs))


# ---------------------------------------------------------------- tracing
@contextmanager
def _traced_forward():
    """Run a forward as a tracer would: the models' input range check reads a value, which a
    fake tensor does not have; like torch.compile, skip it (torch.compiler.is_compiling())."""
    import torch

    with mock.patch.object(torch.compiler, "is_compiling", lambda: True):
        yield


def record(model, x_shape, dtype) -> list[Launch]:
    """The launches of ``model`` on a fake (N, 3, H, W) input of ``dtype`` (see module doc)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    launches: list[Launch] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.namespace == "esr":
                launches.extend(esr_launches(func._schema.name.split("::")[-1], args, out))
            else:
                launch = aten_launch(func, args, kwargs, out)
                if launch is not None:
                    launches.append(launch)
            return out

    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(x_shape, dtype=dtype)
        with _traced_forward(), torch.inference_mode(), Recorder():
            model(x)
    return launches


def modelled_seconds(launches, device: dict) -> float:
    return sum(max(l.bytes / device["bandwidth"], 2 * l.macs / device["fp16_flops"]) for l in launches)


def summarise(launches) -> dict:
    return {"launches": len(launches), "read_bytes": sum(l.read for l in launches),
            "written_bytes": sum(l.written for l in launches), "bytes": sum(l.bytes for l in launches),
            "macs": sum(l.macs for l in launches),
            "modelled_ms": {k: 1e3 * modelled_seconds(launches, d) for k, d in DEVICES.items()}}


def model_report(name: str, fused, eager, size, dtype_name: str = "float16") -> dict:
    """Fused and eager traffic of one model (``fused``: fused with backend "triton"; ``eager``:
    its reference) at (1, 3, *size); the fused model is traced, so this process needs Triton's
    interpreter (``interpreter_usable``)."""
    import torch

    dtype = getattr(torch, dtype_name)
    shape = (1, 3, *size)
    fused_launches, eager_launches = record(fused, shape, dtype), record(eager, shape, dtype)
    f, e = summarise(fused_launches), summarise(eager_launches)
    return {"model": name, "dtype": dtype_name, "input": list(shape),
            "output": [1, 3, 4 * size[0], 4 * size[1]], "fused": f, "eager": e,
            "traffic_ratio": f["bytes"] / e["bytes"], "meets_one_third": f["bytes"] <= TARGET_RATIO * e["bytes"],
            "fused_launches": [asdict(l) for l in fused_launches]}


def interpreter_usable() -> bool:
    """A fused Triton model can be traced on CPU here: TRITON_INTERPRET=1 is set, or triton is
    not imported yet (then it is set now: it is read once, at triton's import)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if "triton" in sys.modules:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def combine(model_reports: list[dict]) -> dict:
    """The whole report: what is modelled, the devices, the target, one entry per model."""
    return {"what": "a model, not a measurement: bytes each launch reads and writes (each tensor once: "
                    "a lower bound, halo re-reads and cache misses ignored) and its MACs; modelled time = "
                    "sum over launches of max(bytes / bandwidth, 2 MACs / peak)",
            "devices": DEVICES, "target_ratio": TARGET_RATIO, "models": model_reports}


def format_table(report: dict) -> str:
    """Markdown table for the README."""
    devs = list(report["devices"])
    head = ["model", "launches fused / eager", "MB fused", "MB eager", "fused / eager"]
    head += [f"{d} ms fused / eager" for d in devs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in report["models"]:
        f, e = m["fused"], m["eager"]
        row = [m["model"], f"{f['launches']} / {e['launches']}", f"{f['bytes'] / 1e6:.0f}",
               f"{e['bytes'] / 1e6:.0f}", f"{m['traffic_ratio']:.2f}"]
        row += [f"{f['modelled_ms'][d]:.2f} / {e['modelled_ms'][d]:.2f}" for d in devs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
