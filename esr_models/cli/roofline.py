"""``esr roofline``: the traffic, work and time model of the fused models against the eager
references at 540x960 -> 2160x3840 (the model itself: esr_kernels/roofline.py, which takes
models): bytes, useful and executed MACs, launches per forward, modelled times per device, for
each dtype asked (default float16 and float32).

``python -m esr_models.cli.roofline [options of esr roofline]`` runs the command too.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from esr_kernels.roofline import combine, format_table, interpreter_usable, model_report

from ..infer.loading import load
from ..io.outputs import check_report_path, write_report
from .common import require_triton, run

MODELS = ("ifadnet", "pfdnlite", "rlfn", "span")
LR_SIZE = (540, 960)  # -> 2160x3840 (4K UHD)
DTYPES = ("float16", "bfloat16", "float32")
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "roofline.json"


def report_for(name: str, size=LR_SIZE, dtype_name: str = "float16", sass: bool = True, tf32: bool = True) -> dict:
    """Fused (Triton) and eager traffic and work of model ``name`` at (1, 3, *size); float32
    dots as TF32 (``tf32``, PyTorch's default for convolutions) or IEEE float32."""
    import torch

    dtype = getattr(torch, dtype_name)
    fused = load(name, fused=True, backend="triton", dtype=dtype)
    with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, allow_tf32=tf32):
        rep = model_report(name, fused, load(name, dtype=dtype), size, dtype_name, sass)
    if dtype_name == "float32":
        rep["float32_dots"] = "tf32" if tf32 else "ieee"
    return rep


def build_report(models=MODELS, size=LR_SIZE, dtype_name: str = "float16", sass: bool = True,
                 tf32: bool | None = None) -> dict:
    """The report for ``models``; in a subprocess under Triton's interpreter when this process
    imported triton for a GPU (nothing runs either way: the fused model is only traced).
    ``sass``: the issue model from the sm_90 SASS (compiled once, then cached). ``tf32``: float32
    dots as TF32 or IEEE; None follows PyTorch's flag in this process, as the kernels do."""
    if tf32 is None:
        from esr_kernels.triton.common import conv_tf32_allowed

        tf32 = conv_tf32_allowed()
    if not interpreter_usable():
        proc = subprocess.run([sys.executable, "-m", "esr_models.cli.roofline", "--report-json", ",".join(models),
                               f"{size[0]}x{size[1]}", dtype_name, "sass" if sass else "nosass",
                               "tf32" if tf32 else "ieee"],
                              capture_output=True, text=True, env=dict(os.environ, TRITON_INTERPRET="1"), check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"roofline subprocess failed: {proc.stderr.strip()[-2000:]}")
        return json.loads(proc.stdout)
    return combine([report_for(m, size, dtype_name, sass, tf32) for m in models])


def cmd_roofline(args) -> int:
    # The report path is checked before the tracing: a folder, a broken link or an existing file
    # (without --overwrite) is refused now, not after the work (esr_models.io.outputs's rule).
    out = check_report_path(args.json, args.overwrite) if args.json else None
    require_triton("esr roofline (it traces the fused Triton models)")
    dtypes = [d.strip() for d in args.dtype.split(",") if d.strip()]
    reports = [build_report(dtype_name=d) for d in dtypes]
    report = dict(reports[0], models=[m for r in reports for m in r["models"]])
    print(f"Traffic, work and modelled time, {', '.join(dtypes)}, {LR_SIZE[0]}x{LR_SIZE[1]} -> "
          f"{4 * LR_SIZE[0]}x{4 * LR_SIZE[1]} (a model, not a measurement; executed work from the "
          f"sm_{report.get('record_arch', 90)} launch configurations)\n")
    print(format_table(report))
    print()
    for m in report["models"]:
        f = m["fused"]
        times = ", ".join(f"{d} {ms:.2f}" for d, ms in f["modelled_ms"].items())
        print(f"{m['model']} {m['dtype']}: {f['launches']} launches per forward; MACs per LR pixel "
              f"useful {m['useful_macs_per_pixel'] / 1e3:.0f}k, executed {m['executed_macs_per_pixel'] / 1e3:.0f}k "
              f"({f['executed_over_useful']:.2f}x); modelled ms: {times}")
    for m in report["models"]:
        verdict = "meets" if m["meets_one_third"] else "misses"
        print(f"{m['model']} {m['dtype']}: fused DRAM traffic {m['traffic_ratio']:.2f} of eager: "
              f"{verdict} the 1/3 target")
    if out is not None:
        write_report(out, json.dumps(report, indent=1) + "\n", args.overwrite)
        print(f"report: {out}")
    return 0


def _dtypes(text: str) -> str:
    """``--dtype``: comma-separated, each float16, bfloat16 or float32, at least one."""
    vals = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in vals if v not in DTYPES]
    if bad or not vals:
        raise argparse.ArgumentTypeError(f"{text!r}: choose from {', '.join(DTYPES)} (comma-separated)")
    return ",".join(vals)


def add_parser(sub) -> None:
    p = sub.add_parser("roofline", help="traffic, executed work and modelled time of fused vs eager (a model, "
                       "not a measurement)")
    p.add_argument("--json", default=None, metavar="PATH", help=f"write the report (e.g. {RESULTS}); an existing "
                   "file only with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--dtype", default="float16,float32", type=_dtypes,
                   help="dtypes to model, comma-separated (default float16,float32)")
    p.set_defaults(func=cmd_roofline)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--report-json"]:  # build_report's subprocess: MODELS HxW DTYPE SASS TF32 -> JSON
        h, w = (int(v) for v in sys.argv[3].split("x"))
        print(json.dumps(build_report(tuple(sys.argv[2].split(",")), (h, w), sys.argv[4], sys.argv[5] == "sass",
                                      sys.argv[6] == "tf32")))
        sys.exit(0)
    parser = argparse.ArgumentParser(prog="esr")
    add_parser(parser.add_subparsers(dest="command", required=True))
    sys.exit(run(parser, ["roofline", *sys.argv[1:]]))
