"""``esr selftest``: check this install's fused kernels on this machine, in one command.

For each fused backend of the device (cuda: ``triton`` and ``cuda``; cpu: ``cpu``), every model
(``esr_models.load(name, fused=True, backend=b)`` against ``esr_models.load(name)``) on image
content (the shipped sample image, or ``esr_models.io.sample.make_sample`` at the test size:
540x960 on CUDA) in every dtype the backend runs; on the Triton backend every ``torch.ops.esr``
op variant the models call, against ``esr_kernels.reference``; on CUDA, CUDA-graph capture and
replay; then a short timing table (eager and torch.compile references, fused backends), a
verdict line and a JSON report. Checks and tolerances: ``selftest_checks``.

Exit codes: 0 every check passed, 1 some failed (listed), 2 a usage error (``--device cuda``
without CUDA, an existing ``--json`` file without ``--overwrite``, a folder or a broken link
there), found before anything runs.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

import esr_kernels
from esr_kernels.timing import median_ms

from . import selftest_checks as C
from ..infer.loading import MODEL_NAMES, load
from ..io.outputs import check_report_path, write_report
from ..io.sample import SAMPLE_PATH, make_sample
from .common import UsageError, check_device, run

SIZES = {("cuda", False): (540, 960), ("cuda", True): (135, 240),
         ("cpu", False): (256, 256), ("cpu", True): (96, 128)}  # (H, W) of the LR input
DEVICE_BACKENDS = {"cuda": ("triton", "cuda"), "cpu": ("cpu",)}


def add_parser(sub) -> None:
    p = sub.add_parser("selftest", help="check the fused kernels against the references on this machine")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cuda or cpu (default: cuda when available)")
    p.add_argument("--json", default=None, metavar="PATH",
                   help="report file (default ./esr-selftest-<UTC time>.json, a new name); an existing "
                        "file only with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--quick", action="store_true",
                   help="smaller input, fewer timing runs, no torch.compile timing")
    p.add_argument("--models", default=None, help="comma-separated subset of the models (default: all)")
    p.add_argument("--backends", default=None,
                   help="comma-separated subset of the fused backends (default: cuda: triton,cuda; "
                        "cpu: cpu; triton on cpu runs Triton's interpreter: slow, for testing)")
    p.add_argument("--no-timings", action="store_true",
                   help="checks only: no timing table (benchmarks/gpu_session.py times separately)")
    p.add_argument("--size", default=None, metavar="HxW",
                   help="input size (default 540x960 on cuda, 256x256 on cpu; --quick: 135x240, 96x128)")
    p.set_defaults(func=cmd_selftest)


# ---------------------------------------------------------------- setup
def _json_path(arg: str | None, overwrite: bool = False) -> Path:
    """The report path, checked before any check runs (esr_models.io.outputs's rule: an
    existing file only with ``overwrite``; never a folder or a broken link). The default is a
    new name in the current folder, so it never replaces anything."""
    if arg is not None:
        return check_report_path(arg, overwrite)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path, i = Path(f"esr-selftest-{stamp}.json"), 2
    while os.path.lexists(path):
        path, i = Path(f"esr-selftest-{stamp}-{i}.json"), i + 1
    return check_report_path(path, False)


def _parse_list(arg: str | None, allowed, what: str) -> list[str]:
    if arg is None:
        return list(allowed)
    items = [s.strip() for s in arg.split(",") if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise UsageError(f"--{what} {arg}: expected some of {', '.join(allowed)}")
    return items


def _parse_size(arg: str | None, default: tuple[int, int]) -> tuple[int, int]:
    if arg is None:
        return default
    try:
        h, w = (int(v) for v in arg.lower().split("x"))
        if h > 0 and w > 0:
            return h, w
    except ValueError:
        pass
    raise UsageError(f"--size {arg}: expected HxW, e.g. 540x960")


def sample_image(h: int, w: int, device) -> tuple[torch.Tensor, str]:
    """(1, 3, h, w) float32 in [0, 1]: the shipped sample image, or the same generator at
    (h, w) (real image content: uniform noise drives these models far outside [0, 1])."""
    if (h, w) == (96, 128):
        from PIL import Image

        arr, source = np.array(Image.open(SAMPLE_PATH).convert("RGB")), "esr_models/data/sample.png"
    else:
        arr, source = make_sample(h, w), f"esr_models.io.sample.make_sample({h}, {w})"
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)[None].float().div(255.0)
    return x.to(device), source


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        cap = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{cap[0]}{cap[1]})"
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} CPUs)"
    except OSError:
        pass
    return f"{platform.processor() or platform.machine()} ({os.cpu_count()} CPUs)"


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__,
           "torch_cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        from importlib.metadata import version

        out["esr-kernels"] = version("esr-kernels")
    except Exception:  # noqa: BLE001  not installed as a distribution (a bare checkout)
        out["esr-kernels"] = None
    return out


def _backend_available(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run on ``device`` in this install (None if it can), from
    ``esr_kernels.available_backends()``."""
    have = esr_kernels.available_backends()
    errors = have.get("import_errors", {})
    if backend == "triton":
        if not have["triton"]:
            return "triton is not installed"
        if device.type == "cpu" and not have["triton_interpreter"]:
            return "Triton runs on CPU tensors only with TRITON_INTERPRET=1 set before triton is imported"
        return None
    if backend == "cuda":  # the CUDA extension defines the esr_native schemas itself
        if have["cuda_extension"]:
            return None
        return errors.get("_C_cuda", "the native CUDA extension is not built")
    if backend == "cpu":
        return None if have["cpu_extension"] else errors.get("_C_cpu", "the native CPU extension is not built")
    return f"unknown backend {backend}"


# ---------------------------------------------------------------- checks
def _print_check(c: dict) -> None:
    what = " ".join(str(c[k]) for k in ("kind", "model", "backend", "dtype") if c.get(k) is not None)
    if c.get("variant"):
        what += f" {c['variant']}"
    if c["passed"]:
        print(f"  PASS {what}: {c['metric']} {c['error']:.3g} <= {c['tolerance']:.3g}")
    elif c.get("detail"):
        print(f"  FAIL {what}: {c['detail']}")
    else:
        print(f"  FAIL {what}: {c['metric']} {c['error']} > {c['tolerance']}")


def run_checks(device, models, backends, x) -> list[dict]:
    checks: list[dict] = []

    def add(c):
        checks.append(c)
        _print_check(c)

    usable = []
    for b in backends:
        why = _backend_available(b, device)
        add(C.run_check({"kind": "available", "backend": b, "metric": "available", "tolerance": 0.0},
                        (lambda why=why: (_ for _ in ()).throw(RuntimeError(why))) if why else (lambda: (0.0, 0.0))))
        if not why:
            usable.append(b)
    lowp = sorted({d for b in usable for d in C.BACKEND_DTYPES[b] if d != torch.float32}, key=str)
    for name in models:
        try:
            with torch.inference_mode():
                truth = load(name, device=device)(x)
                ref_err = {d: C.max_abs(load(name, device=device, dtype=d)(x.to(d)), truth) for d in lowp}
        except Exception as exc:  # noqa: BLE001  no weights, or the reference itself fails
            add(C.run_check({"kind": "model", "model": name, "backend": "reference", "metric": "runs"},
                            lambda exc=exc: (_ for _ in ()).throw(exc)))
            continue
        for b in usable:
            for d in C.BACKEND_DTYPES[b]:
                entry = {"kind": "model", "model": name, "backend": b, "dtype": C.dtype_name(d), "metric": "load"}
                try:
                    with torch.inference_mode():
                        fused = load(name, device=device, dtype=d, fused=True, backend=b)
                except Exception as exc:  # noqa: BLE001
                    add(C.run_check(entry, lambda exc=exc: (_ for _ in ()).throw(exc)))
                    continue
                add(C.model_check(name, fused, x, d, truth, ref_err.get(d), b))
                if b == "triton":
                    for c in C.op_checks(name, fused, x, d, b):
                        add(c)
                if device.type == "cuda":
                    add(C.cuda_graph_check(name, fused, x, d, b))
                del fused
        del truth
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return checks


# ---------------------------------------------------------------- timing
def _median_ms(fn, device, warmup: int, iters: int) -> float:
    with torch.inference_mode():
        return median_ms(fn, device, warmup, iters)


def run_timings(device, models, backends, x, quick: bool) -> dict:
    """Median ms per forward: eager reference, torch.compile'd reference (CUDA, not --quick),
    each fused backend; float16 on CUDA (the deployment dtype), float32 on CPU."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    warmup, iters = (1, 3) if quick else (3, 10)
    xd = x.to(dtype)
    rows = []
    for name in models:
        row = {"model": name, "dtype": C.dtype_name(dtype), "shape": list(x.shape)}
        try:
            ref = load(name, device=device, dtype=dtype)
            row["eager_ms"] = _median_ms(lambda: ref(xd), device, warmup, iters)
            if device.type == "cuda" and not quick:
                compiled = torch.compile(ref)
                row["compile_ms"] = _median_ms(lambda: compiled(xd), device, warmup, iters)
            for b in backends:
                if dtype not in C.BACKEND_DTYPES[b] or _backend_available(b, device):
                    continue
                if b == "triton" and device.type == "cpu":
                    continue  # Triton's interpreter: correctness only, never timed
                with torch.inference_mode():
                    fused = load(name, device=device, dtype=dtype, fused=True, backend=b)
                row[f"{b}_ms"] = _median_ms(lambda: fused(xd), device, warmup, iters)
        except Exception as exc:  # noqa: BLE001  a timing failure is shown, not a verdict
            row["error"] = f"{type(exc).__name__}: {exc}"[:500]
        rows.append(row)
    return {"dtype": C.dtype_name(dtype), "warmup": warmup, "iters": iters, "statistic": "median ms",
            "rows": rows}


def _print_timings(t: dict, backends) -> None:
    cols = ["eager_ms", "compile_ms"] + [f"{b}_ms" for b in backends]
    print(f"timing ({t['dtype']}, {t['statistic']} of {t['iters']} after {t['warmup']} warm-up):")
    print("  " + f"{'model':<10}" + "".join(f"{c[:-3]:>12}" for c in cols))
    for r in t["rows"]:
        cells = "".join(f"{r[c]:>12.2f}" if c in r else f"{'-':>12}" for c in cols)
        print(f"  {r['model']:<10}{cells}" + (f"  ({r['error']})" if "error" in r else ""))


# ---------------------------------------------------------------- command
def cmd_selftest(args) -> int:
    device = check_device(args.device)
    models = _parse_list(args.models, MODEL_NAMES, "models")
    backends = _parse_list(args.backends, DEVICE_BACKENDS[device.type] if args.backends is None
                           else ("triton", "cuda", "cpu"), "backends")
    h, w = _parse_size(args.size, SIZES[(device.type, args.quick)])
    path = _json_path(args.json, args.overwrite)

    x, source = sample_image(h, w, device)
    # The float32 references must be float32: TF32 convolutions/matmuls would put them ~1e-3 off.
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.perf_counter()
    print(f"esr selftest on {_device_name(device)}: backends {', '.join(backends)}; models "
          f"{', '.join(models)}; input {source} ({h}x{w})")
    try:
        checks = run_checks(device, models, backends, x)
        timings = None if args.no_timings else run_timings(device, models, backends, x, args.quick)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
    if timings is not None:
        _print_timings(timings, backends)

    failed = [c for c in checks if not c["passed"]]
    verdict = "PASS" if checks and not failed else "FAIL"
    names = [" ".join(str(c[k]) for k in ("kind", "model", "backend", "dtype", "variant") if c.get(k))
             for c in failed]
    line = (f"selftest: PASS ({len(checks)} checks)" if verdict == "PASS" else
            f"selftest: FAIL ({len(failed)} of {len(checks)} checks failed: {'; '.join(names)})")
    report = {
        "verdict": verdict, "device": str(device), "device_name": _device_name(device),
        "versions": _versions(), "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "quick": args.quick, "models": models, "backends": backends,
        "input": {"source": source, "shape": list(x.shape)},
        "tf32": "off for the checks (float32 references in IEEE float32)",
        "tolerances": {"model_float32_max_abs": C.FP32_TOL,
                       "model_low_precision": "max |fused - ref_fp32| <= 2 max |ref_lowp - ref_fp32|",
                       "op_rel_l2": {C.dtype_name(d): v for d, v in C.REL_TOL.items()},
                       "cuda_graph": "replay == eager, exactly"},
        "checks": checks, "failed": names, "timings": timings,
        # timings from a busy machine mean little: the 1/5/15-minute load averages at the end
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "seconds": round(time.perf_counter() - t0, 1),
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    # Atomic; without --overwrite a file made meanwhile is not replaced either (an error).
    write_report(path, json.dumps(report, indent=1), args.overwrite)
    print(line)
    print(f"report: {path}")
    return 0 if verdict == "PASS" else 1


def main(argv=None) -> int:  # python -m esr_models.cli.selftest: the same as ``esr selftest``
    parser = argparse.ArgumentParser(prog="esr")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser, ["selftest", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
