"""The numeric checks behind ``esr selftest`` (esr_models/cli/selftest.py runs and reports them).

Each check returns a dict: ``kind`` (available / op / model / cuda_graph), what it ran
(model, backend, dtype, op variant, input shape), ``metric``, ``error``, ``tolerance``,
``passed``, and ``detail`` when something raised. Tolerances are the test suite's:

- models, float32: max |fused - reference| <= 1e-5 on image content (tests/models/test_fused_models.py,
  tests/kernels/test_cpu_backend.py FP32_TOL);
- models, float16/bfloat16: max |fused - ref_fp32| <= 2 max |ref_lowp - ref_fp32| (the relative
  rule of tests/models/test_fused_models.py: the fused model may be at most twice as far from the float32
  reference as the reference itself is in that dtype);
- ops: ||op - reference|| / ||reference|| <= REL_TOL[dtype], the reference in float32 on the
  same (low-precision) inputs (tests/kernels/test_kernels.py REL_TOL);
- CUDA graphs: a replay equals an eager forward on the same new input exactly.

Op checks take every ``torch.ops.esr.*`` call the fused Triton model makes on the image (each
variant the models use, at the real size, on real activations) and compare it with
``esr_kernels.reference`` on the same arguments.
"""
from __future__ import annotations

import math
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from esr_kernels import reference as R
from esr_kernels.op_args import CONV, ESA, ConvEpilogue, ConvGeometry
from esr_kernels.policy import runs

FP32_TOL = 1e-5
REL_TOL = {torch.float32: 1e-6, torch.float16: 4 * 2.0 ** -11, torch.bfloat16: 4 * 2.0 ** -8}
# dtypes each fused backend runs: the backends' own lists (esr_kernels.policy.runs).
BACKEND_DTYPES = {b: runs(b)[1] for b in ("cpu", "triton", "cuda")}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def _number(v):
    """JSON-safe: finite floats as they are, NaN/Inf as strings."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else repr(v)


def run_check(entry: dict, fn) -> dict:
    """Run ``fn() -> (error, tolerance)`` and fill ``entry``; an exception fails the check."""
    t0 = time.perf_counter()
    try:
        err, tol = fn()
        entry.update(error=_number(err), tolerance=_number(tol),
                     passed=bool(math.isfinite(err) and err <= tol))
    except Exception as exc:  # noqa: BLE001  any failure is a failed check, reported by name
        entry.update(error=None, tolerance=entry.get("tolerance"), passed=False,
                     detail=f"{type(exc).__name__}: {exc}"[:2000])
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    return entry


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def rel_l2(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.double(), ref.double()
    return ((out - ref).norm() / ref.norm().clamp_min(1e-30)).item()


# ---------------------------------------------------------------- op checks
def _f32(t):
    return t.float() if isinstance(t, torch.Tensor) else t


def _unpack_depthwise(dw_packed: torch.Tensor, c: int) -> torch.Tensor:
    """esr::bsb's depthwise taps (9, CO_pad) -> the reference's (C, 1, 3, 3)."""
    return dw_packed[:, :c].t().reshape(c, 1, 3, 3)


def reference_of(op_name: str, args: tuple) -> torch.Tensor:
    """esr_kernels.reference of one esr:: call, in float32 on the same arguments."""
    a = [_f32(t) for t in args]
    if op_name == "conv":
        return R.conv(*CONV.split(a))
    if op_name == "bsb":
        x, pw, dw, b, res = a
        c = x.shape[1]
        return R.bsb(x, pw, _unpack_depthwise(dw, c), b[:c], res)
    if op_name == "esa":
        return R.esa(*ESA.split(a))
    if op_name == "la_reduce":
        return R.la_reduce(*a)
    if op_name == "gate":
        return R.gate(*a)
    if op_name == "concat_conv":  # esr::conv's 1x1 on the concatenation (its semantics)
        feats, w, b, c_out, act, mode, res = a
        return R.conv(torch.cat(feats, dim=1), w, b, ConvGeometry(c_conv=c_out, c_out=c_out, ksize=1, stride=1,
                                                                     padding=0),
                      ConvEpilogue(act=act, residual_mode=mode, residual=res))
    raise KeyError(op_name)


def _input_of(args: tuple) -> torch.Tensor:
    """An esr:: call's input: its first argument, or concat_conv's first feature."""
    return args[0][0] if isinstance(args[0], (list, tuple)) else args[0]


def variant_of(op_name: str, args: tuple) -> str:
    """A short name for the op variant: its integer/bool arguments and optional tensors."""
    x = _input_of(args)
    layout = "channels_last" if (x.is_contiguous(memory_format=torch.channels_last)
                                 and not x.is_contiguous()) else ("nchw" if x.is_contiguous() else "strided")
    if op_name == "conv":
        _, _, _, g, e = CONV.split(args)
        parts = [f"{x.shape[1]}->{g.c_conv}/{g.c_out}", f"k{g.ksize}s{g.stride}", f"act{e.act}"]
        if e.residual_mode:
            parts.append(f"res{e.residual_mode}")
        if e.gate_input:
            parts.append("gate_in")
        if e.shift is not None:
            parts.append("shift")
        if e.shuffle:
            parts.append(f"shuffle{e.shuffle}sc{e.shortcut_mode}")
        return f"conv[{','.join(parts)}]{layout}"
    extra = "+res" if op_name in ("bsb", "esa") and args[-1] is not None else ""
    return f"{op_name}[{x.shape[1]}{extra}]{layout}"


class _OpChecker(TorchDispatchMode):
    """Compares each esr:: call with its reference as the model runs; keeps the worst error
    per variant (no activation is held after its call)."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype
        self.worst: dict[str, dict] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        ns, name = func.namespace, func._schema.name.split("::")[-1]
        if ns == "esr":
            key = variant_of(name, args)
            with torch.no_grad():
                ref = reference_of(name, args)
                err = rel_l2(out, ref) if out.shape == ref.shape else float("inf")
            rec = self.worst.setdefault(key, {"op": name, "calls": 0, "error": 0.0,
                                              "shape": list(_input_of(args).shape)})
            rec["calls"] += 1
            if not err <= rec["error"]:  # NaN and Inf count as worst
                rec["error"] = err
        return out


def op_checks(name: str, model, x: torch.Tensor, dtype: torch.dtype, backend: str) -> list[dict]:
    """One check per esr:: op variant the fused model calls on ``x`` (cast to ``dtype``)."""
    checker = _OpChecker(dtype)
    base = {"kind": "op", "model": name, "backend": backend, "dtype": dtype_name(dtype),
            "metric": "rel_l2", "tolerance": REL_TOL[dtype]}
    try:
        with torch.inference_mode(), checker:
            model(x.to(dtype))
        if x.device.type == "cuda":
            torch.cuda.synchronize()
    except Exception as exc:  # noqa: BLE001
        return [run_check(dict(base, op="forward"), lambda: (_ for _ in ()).throw(exc))]
    if not checker.worst:
        return [run_check(dict(base, op="none"), lambda: (_ for _ in ()).throw(
            RuntimeError("the fused model made no torch.ops.esr calls")))]
    checks = []
    for key, rec in sorted(checker.worst.items()):
        entry = dict(base, op=rec["op"], variant=key, calls=rec["calls"], shape=rec["shape"])
        checks.append(run_check(entry, lambda e=rec["error"]: (e, REL_TOL[dtype])))
    return checks


# ---------------------------------------------------------------- model checks
def model_check(name: str, fused, x: torch.Tensor, dtype: torch.dtype, truth: torch.Tensor,
                ref_lowp_err: float | None, backend: str) -> dict:
    """The fused model (already loaded for ``backend`` in ``dtype``) against the reference."""
    entry = {"kind": "model", "model": name, "backend": backend, "dtype": dtype_name(dtype),
             "shape": list(x.shape)}
    if dtype == torch.float32:
        entry.update(metric="max_abs", tolerance=FP32_TOL)
    else:
        entry.update(metric="max_abs_vs_fp32 <= 2x reference's own", tolerance=2 * ref_lowp_err,
                     reference_error=ref_lowp_err)

    def fn():
        if fused.backend != backend:
            raise RuntimeError(f"asked for backend {backend!r}, the model runs {fused.backend!r}")
        with torch.inference_mode():
            out = fused(x.to(dtype))
        if out.dtype != dtype or out.shape != truth.shape:
            raise RuntimeError(f"output {tuple(out.shape)} {out.dtype}, expected {tuple(truth.shape)} {dtype}")
        return max_abs(out, truth), entry["tolerance"]

    return run_check(entry, fn)


def cuda_graph_check(name: str, fused, x: torch.Tensor, dtype: torch.dtype, backend: str) -> dict:
    """Capture one forward in a CUDA graph; a replay on new input must equal eager exactly."""
    entry = {"kind": "cuda_graph", "model": name, "backend": backend, "dtype": dtype_name(dtype),
             "shape": list(x.shape), "metric": "max_abs (replay vs eager)", "tolerance": 0.0}

    def fn():
        static_x = x.to(dtype).clone()
        with torch.inference_mode():
            first = fused(static_x).clone()
            stream = torch.cuda.Stream()  # warm-up on a side stream, as torch.cuda.graphs advises
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                fused(static_x)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = fused(static_x)
            static_x.copy_(torch.flip(x, dims=[-1]).to(dtype))  # new content, same shape
            graph.replay()
            eager = fused(static_x)
            torch.cuda.synchronize()
        if torch.equal(out, first):
            raise RuntimeError("the replay did not change its output for a new input")
        return max_abs(out, eager), 0.0

    return run_check(entry, fn)
