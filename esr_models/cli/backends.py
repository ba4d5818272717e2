"""``esr backends``: which fused-kernel backends this install has (JSON), and, given a backend
name, whether it runs here.

Exit codes: 0 the report (and the backend asked about runs); 1 the backend asked about cannot
run on this device and dtype (why: in the JSON and on stderr); 2 a setting that cannot run, such
as ESR_CPU_ISA above this CPU's level (the report is printed first: it is where to look)."""
from __future__ import annotations

import json
import sys

import esr_kernels
from esr_kernels.policy import resolve_backend

from ..infer.upscaler import DTYPES
from .common import check_cpu_isa, parse_device


def cmd_backends(args) -> int:
    report = esr_kernels.available_backends()
    failed = None
    if args.backend is not None:
        device = parse_device(args.device)
        try:
            runs = resolve_backend(args.backend, device, DTYPES[args.dtype])
        except RuntimeError as exc:
            runs, failed = None, str(exc)
        report["asked"] = {"backend": args.backend, "device": str(device), "dtype": args.dtype, "runs": runs,
                           "error": failed}
    print(json.dumps(report, indent=2))
    sys.stdout.flush()  # the report before the error line, when both go to one terminal
    check_cpu_isa()  # a bad ESR_CPU_ISA: exit 2, as for every command (after the report)
    if failed is not None:
        print(f"error: backend {args.backend!r} cannot run on {device} in {args.dtype}: {failed}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub) -> None:
    be = sub.add_parser("backends", help="which fused-kernel backends this install has; with a backend name, "
                        "whether it runs here (exit 1 if not)")
    be.add_argument("backend", nargs="?", default=None, choices=["auto", "triton", "cuda", "cpu"],
                    help="a backend to check: exit 1 if it cannot run on --device in --dtype")
    be.add_argument("--device", default="cpu", help="the device to check the backend on (default: cpu)")
    be.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    # ESR_CPU_ISA is checked by the command, after its report (common.run).
    be.set_defaults(func=cmd_backends, reports_cpu_isa=True)
