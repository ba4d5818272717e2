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
    """The ``esr`` command (``argv`` None: this process's arguments, as the ``esr`` script and
    ``python -m esr_models.cli`` run it). Returns the exit status."""
    parser = build_parser()
    # Run as the command (not called in-process with argv): a run stopped by SIGTERM/SIGHUP may
    # end the process at once after its clean-up (upscale.exit_after_signal).
    parser.set_defaults(as_command=argv is None)
    return run(parser, argv)
