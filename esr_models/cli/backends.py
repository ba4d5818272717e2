"""``esr backends``: which fused-kernel backends this install has (JSON)."""
from __future__ import annotations

import json

import esr_kernels


def cmd_backends(args) -> int:
    print(json.dumps(esr_kernels.available_backends(), indent=2))
    return 0


def add_parser(sub) -> None:
    be = sub.add_parser("backends", help="which fused-kernel backends this install has")
    be.set_defaults(func=cmd_backends)
