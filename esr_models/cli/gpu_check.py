"""``esr gpu-check``: record the fused models' Triton launches for each GPU arch and check every
specialisation's resources (the checking itself: esr_kernels/gpu_check.py, which takes
launches, not model names)."""
from __future__ import annotations

import argparse
import ast
import json
import os
import shlex
import sys
from functools import lru_cache
from pathlib import Path

import esr_kernels

from esr_kernels.errors import InvalidValueError
from esr_kernels.gpu_check import (ARCH_LIMITS, DEFAULT_ARCHS, DEFAULT_SIZES, check_archs, check_launches,
                                   format_table, make_input, parse_sizes, record_launches)

from ..infer.loading import load
from ..io.outputs import check_report_path, write_report
from .common import require_triton

MODELS = ("ifadnet", "pfdnlite", "rlfn", "span")
DTYPES = ("float32", "float16", "bfloat16")
LAYOUTS = ("nchw", "channels_last")
RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gpu-resources.json"


def variants(dtype: str, layout: str, extras: bool = True, everywhere: bool = False) -> list[tuple[str, bool]]:
    """The (dense-conv kernel, TF32 allowed) pairs recorded for one dtype and layout: v1 under
    PyTorch's default flags (float32 as TF32) always; with ``extras`` (CI: at the last size
    asked, the odd 47x59 by default, which reaches Triton's non-divisible specialisation
    class) also float32 with TF32 off (IEEE float32 dots) and, for channels_last, v2, the
    tensor-core implicit GEMM (``ESR_TRITON_CONV=v2``; its layout) in float16 and float32 (its
    bfloat16 build is float16's with another element type; ``everywhere``, the GPU session's
    warm-up, records it too). The restriction keeps CI's compile count within its time budget."""
    out = [("v1", True)]
    if extras or everywhere:
        if dtype == "float32":
            out.append(("v1", False))
        if layout == "channels_last" and (everywhere or dtype != "bfloat16"):
            out.append(("v2", True))
    return out


def record_models(arch: int, models=MODELS, dtypes=DTYPES, layouts=LAYOUTS, sizes=DEFAULT_SIZES,
                  batch: int = 2, variants_everywhere: bool = False) -> list:
    """(Launch, "model/dtype/layout/HxW[/variant]") for every launch of every combination and
    ``variants`` (at the last size, or at every size with ``variants_everywhere``: the GPU
    session's warm-up compiles what it will launch)."""
    # Set before triton's first import (it reads it once): the fused models record on CPU tensors.
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    from esr_kernels.triton.configs import conv_kernel

    out = []
    for name in models:
        for dt in dtypes:
            packed = {}  # per conv choice: packing follows it (PFDNLite stores its gate under v2)

            def model_for(conv):
                if conv not in packed:
                    with conv_kernel(conv):
                        packed[conv] = load(name, fused=True, backend="triton", dtype=getattr(torch, dt))
                return packed[conv]

            for layout in layouts:
                checked = parse_sizes(",".join(f"{h}x{w}" for h, w in sizes))  # checks them
                for i, hw in enumerate(checked):
                    for conv, tf32 in variants(dt, layout, i == len(checked) - 1, variants_everywhere):
                        tag = "" if (conv, tf32) == ("v1", True) else f"/{conv}" + ("" if tf32 else "/ieee")
                        with conv_kernel(conv), torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled,
                                                                           allow_tf32=tf32):
                            launches = record_launches(model_for(conv), make_input(dt, layout, hw, batch), arch)
                        out += [(launch, f"{name}/{dt}/{layout}/{hw[0]}x{hw[1]}{tag}") for launch in launches]
    return out


def run_check(archs=DEFAULT_ARCHS, models=MODELS, dtypes=DTYPES, layouts=LAYOUTS, sizes=DEFAULT_SIZES,
              batch: int = 2, jobs: int = 2, cache_dir: str | Path | None = None,
              kernels=None, variants_everywhere: bool = False) -> dict:
    """Record, compile and judge; returns the report (the JSON ``esr gpu-check`` writes).
    ``kernels``: only these kernel names (e.g. ``("_conv_kernel",)``), default (None) all."""
    check_archs(archs)
    _check_selection(archs, models, dtypes, layouts, kernels)
    recorded = ((arch, launch, used_by) for arch in archs
                for launch, used_by in record_models(arch, models, dtypes, layouts, sizes, batch,
                                                     variants_everywhere))
    inputs = {"batch": batch, "sizes": [list(hw) for hw in sizes], "models": list(models), "dtypes": list(dtypes),
              "layouts": list(layouts), "kernels": list(kernels) if kernels else None}
    report = check_launches(recorded, inputs, jobs, cache_dir, kernels)
    if sys.argv[1:2] == ["gpu-check"]:
        report["command"] = "esr gpu-check " + " ".join(shlex.quote(a) for a in sys.argv[2:])
    return report


def _check_selection(archs, models, dtypes, layouts, kernels) -> None:
    """An InvalidValueError, before recording, for a selection that is empty or names something
    unknown: such a run would compile nothing and pass (the command's options check the same)."""
    for what, vals, choices in (("archs", archs, tuple(ARCH_LIMITS)), ("models", models, MODELS),
                                ("dtypes", dtypes, DTYPES), ("layouts", layouts, LAYOUTS),
                                ("kernels", () if kernels is None else kernels, triton_kernels())):
        bad = [v for v in vals if v not in choices]
        if bad or (not vals and (what != "kernels" or kernels is not None)):
            raise InvalidValueError(f"{what} {list(vals)}: {'unknown ' + str(bad) if bad else 'none chosen'}; "
                                    f"choose from {list(choices)}")


def _csv_ints(text: str) -> tuple[int, ...]:
    """``--arch``: comma-separated compute capabilities with known limits, at least one (an
    empty list would check nothing)."""
    vals = tuple(int(v) for v in text.split(",") if v.strip())
    bad = [v for v in vals if v not in ARCH_LIMITS]
    if bad or not vals:
        what = f"no limits known for {', '.join(map(str, bad))}" if bad else f"{text!r} names none"
        raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(map(str, ARCH_LIMITS))}")
    return vals


def _csv(choices):
    """An option's parser: comma-separated names, each one of ``choices``, at least one."""
    def parse(text):
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in choices]
        if bad or not vals:
            what = f"unknown {', '.join(bad)}" if bad else f"{text!r} names none"
            raise argparse.ArgumentTypeError(f"{what}; choose from {', '.join(choices)}")
        return vals
    parse.__name__ = "names"  # argparse's "invalid <name> value" if anything else raises
    return parse


@lru_cache(maxsize=1)
def triton_kernels() -> tuple[str, ...]:
    """The Triton kernels the package launches: the ``@triton.jit`` functions of
    esr_kernels/triton/*.py named ``*_kernel`` (the other jit functions are helpers they call),
    found by reading the source, so that ``--kernels`` is checked without importing triton or
    compiling anything."""
    names = set()
    for path in sorted((Path(esr_kernels.__file__).parent / "triton").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.FunctionDef) and node.name.endswith("_kernel") and \
                    any("jit" in ast.unparse(d) for d in node.decorator_list):
                names.add(node.name)
    return tuple(sorted(names))


def _kernel_names(text: str) -> tuple[str, ...]:
    """``--kernels``: names of ``triton_kernels()``, at least one."""
    return _csv(triton_kernels())(text)


def check_selected(report: dict) -> str | None:
    """Why ``report`` checked nothing (no specialisation compiled or found in the cache: the
    selection launched none of the chosen kernels), or None. A check of nothing is no pass."""
    t = report["timing_s"]
    if t["compiled"] + t["cached"]:
        return None
    inp = report["input"]
    return ("gpu-check: nothing was checked: no specialisation was compiled or cached (the models "
            f"{','.join(inp['models'])} in {','.join(inp['dtypes'])} / {','.join(inp['layouts'])} launch none "
            f"of the kernels {','.join(inp.get('kernels') or ['(all)'])}); choose another selection")


def cmd_gpu_check(args) -> int:
    """Check the report path, record, compile and judge; exit 1 on a violation or when nothing
    was checked."""
    json_path = check_report_path(args.json, args.overwrite) if args.json else None  # before any work
    require_triton("esr gpu-check")
    report = run_check(args.arch, args.models, args.dtypes, args.layouts, args.sizes, args.batch,
                       args.jobs, args.cache_dir, args.kernels, args.variants_everywhere)
    print(format_table(report))
    if json_path is not None:
        write_report(json_path, json.dumps(report, indent=1) + "\n", args.overwrite)
    empty = check_selected(report)
    if empty:
        print(f"error: {empty}", file=sys.stderr)
        return 1
    return 1 if report["violations"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("gpu-check", help="compile the Triton kernels for GPU archs (no GPU needed) "
                                         "and check registers, shared and local memory")
    p.add_argument("--arch", type=_csv_ints, default=DEFAULT_ARCHS,
                   help="comma-separated compute capabilities (default 80,86,89,90)")
    p.add_argument("--json", metavar="PATH", help=f"write the report here (e.g. {RESULTS}); an existing "
                   "file only with --overwrite")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--models", type=_csv(MODELS), default=MODELS)
    p.add_argument("--dtypes", type=_csv(DTYPES), default=DTYPES)
    p.add_argument("--layouts", type=_csv(LAYOUTS), default=LAYOUTS)
    p.add_argument("--kernels", type=_kernel_names, default=None,
                   help="only these kernels, e.g. _conv_kernel,_bsb_kernel (the Triton kernels of "
                        "esr_kernels/triton/; an unknown name is an error listing them)")
    p.add_argument("--size", "--sizes", dest="sizes", type=parse_sizes, default=DEFAULT_SIZES,
                   help="input sizes while recording, HxW[,HxW...] (default 40x40,47x59: both "
                        "divisibility classes of the size and stride arguments)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--variants-everywhere", action="store_true",
                   help="record the IEEE float32 and v2-conv variants at every size and dtype, not only at "
                        "the last size (and v2 not in bfloat16)")
    p.add_argument("--jobs", type=int, default=2, help="compiler processes")
    p.add_argument("--cache-dir", default=None, help="default $ESR_GPU_CHECK_CACHE or "
                                                     "~/.cache/esr-kernels/gpu-check")
    p.set_defaults(func=cmd_gpu_check)
