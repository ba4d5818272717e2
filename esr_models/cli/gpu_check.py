"""``esr gpu-check``: record the fused models' Triton launches for each GPU arch and check every
specialisation's resources (the checking itself: esr_kernels/gpu_check.py, which takes
launches, not model names)."""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from esr_kernels.gpu_check import (DEFAULT_ARCHS, DEFAULT_SIZES, check_archs, check_launches, format_table,
                                   make_input, parse_sizes, record_launches)

from ..infer.loading import load
from .common import require_triton

MODELS = ("ifadnet", "pfdnlite", "rlfn")
DTYPES = ("float32", "float16", "bfloat16")
LAYOUTS = ("nchw", "channels_last")
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu-resources.json"


def record_models(arch: int, models=MODELS, dtypes=DTYPES, layouts=LAYOUTS, sizes=DEFAULT_SIZES,
                  batch: int = 2) -> list:
    """(Launch, "model/dtype/layout/HxW") for every launch of every combination."""
    # Set before triton's first import (it reads it once): the fused models record on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    out = []
    for name in models:
        for dt in dtypes:
            model = load(name, fused=True, backend="triton", dtype=getattr(torch, dt))
            for layout in layouts:
                for hw in parse_sizes(",".join(f"{h}x{w}" for h, w in sizes)):  # checks them
                    for launch in record_launches(model, make_input(dt, layout, hw, batch), arch):
                        out.append((launch, f"{name}/{dt}/{layout}/{hw[0]}x{hw[1]}"))
    return out


def run_check(archs=DEFAULT_ARCHS, models=MODELS, dtypes=DTYPES, layouts=LAYOUTS, sizes=DEFAULT_SIZES,
              batch: int = 2, jobs: int = 2, cache_dir: str | Path | None = None,
              kernels=None) -> dict:
    """Record, compile and judge; returns the report (the JSON ``esr gpu-check`` writes).
    ``kernels``: only these kernel names (e.g. ``("_conv_kernel",)``), default all."""
    check_archs(archs)
    recorded = ((arch, launch, used_by) for arch in archs
                for launch, used_by in record_models(arch, models, dtypes, layouts, sizes, batch))
    inputs = {"batch": batch, "sizes": [list(hw) for hw in sizes], "models": list(models), "dtypes": list(dtypes),
              "layouts": list(layouts)}
    report = check_launches(recorded, inputs, jobs, cache_dir, kernels)
    if sys.argv[1:2] == ["gpu-check"]:
        report["command"] = "esr gpu-check " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return report


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _csv(choices):
    def parse(text):
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return vals
    return parse


def cmd_gpu_check(args) -> int:
    require_triton("esr gpu-check")
    report = run_check(args.arch, args.models, args.dtypes, args.layouts, args.sizes, args.batch,
                       args.jobs, args.cache_dir, args.kernels)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["violations"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("gpu-check", help="compile the Triton kernels for GPU archs (no GPU needed) "
                                         "and check registers, shared and local memory")
    p.add_argument("--arch", type=_csv_ints, default=DEFAULT_ARCHS,
                   help="comma-separated compute capabilities (default 80,86,89,90)")
    p.add_argument("--json", metavar="PATH", help=f"write the report here (e.g. {RESULTS})")
    p.add_argument("--models", type=_csv(MODELS), default=MODELS)
    p.add_argument("--dtypes", type=_csv(DTYPES), default=DTYPES)
    p.add_argument("--layouts", type=_csv(LAYOUTS), default=LAYOUTS)
    p.add_argument("--kernels", type=lambda t: tuple(v for v in t.split(",") if v), default=None,
                   help="only these kernels (e.g. _conv_kernel,_bsb_kernel)")
    p.add_argument("--size", "--sizes", dest="sizes", type=parse_sizes, default=DEFAULT_SIZES,
                   help="input sizes while recording, HxW[,HxW...] (default 40x40,47x59: both "
                        "divisibility classes of the size and stride arguments)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="compiler processes")
    p.add_argument("--cache-dir", default=None, help="default $ESR_GPU_CHECK_CACHE or "
                                                     "~/.cache/esr-kernels/gpu-check")
    p.set_defaults(func=cmd_gpu_check)
