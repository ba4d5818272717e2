"""The ``esr`` command: ``main`` builds its parser from one module per command (upscale, eval,
info, backends, train, export, gpu-check, selftest, roofline) and runs it. What the commands
share (UsageError, device and model loading, the error policy) is in common.py.

Exit codes: 0 everything done (files skipped because their output exists count as done);
1 some inputs failed (each reported by name, the rest still ran), or a bug (an unexpected
exception: its traceback is shown); 2 a usage or setup error found before any file was touched
(bad options, no model, no device)."""
from __future__ import annotations

import argparse

from .common import run


def build_parser() -> argparse.ArgumentParser:
    # Imported here, not at the top: ``python -m esr_models.cli.<command>`` (export, selftest,
    # roofline) runs that module as __main__, which must not have been imported with the package.
    from . import backends, evaluate, export, gpu_check, info, roofline, selftest, train, upscale

    parser = argparse.ArgumentParser(prog="esr", description="Efficient x4 super-resolution.")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in (upscale, evaluate, info, backends, train, export, gpu_check, selftest, roofline):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The ``esr`` command (``argv`` None: this process's arguments). Returns the exit status."""
    code = run(build_parser(), argv)
    if argv is None and code in _STOPPED_BY_SIGNAL:
        _exit_now(code)
    return code


# 128 + SIGHUP / SIGTERM: `esr upscale` stopped by the signal (upscale.signals_as_interrupts)
# after removing its temporary file and printing the summary.
_STOPPED_BY_SIGNAL = (128 + 1, 128 + 15)


def _exit_now(code: int) -> None:
    """Exit with ``code`` without the interpreter's teardown. Why: the signal's exception can land
    while the model stage is inside a PyAV call; the interrupted codec contexts are then freed at
    interpreter exit, and under load that crashed (SIGSEGV, status -11 instead of the documented
    143) in CI. Everything the command made is already cleaned up and reported by then."""
    import os
    import sys

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)
