"""``esr export SOURCE [-o OUT.pth] [--onnx OUT.onnx] [--opset N] [--raw] [--overwrite]``.

SOURCE is a model name (``ifadnet``, ``pfdnlite``, ``rlfn``, ``span``, ``spantiny``), a deploy checkpoint (any layout
``esr_models.load`` reads) or a checkpoint written by ``esr train``.

* ``-o OUT.pth``: the deploy-form checkpoint in the upstream key layout
  (``esr_models.training.deploy_checkpoint.export_deploy_checkpoint``).
* ``--onnx OUT.onnx``: the deploy (reference) model as ONNX, dynamic batch, height and width,
  opset ``--opset`` (default 17), checked with ONNX Runtime when it is installed
  (``esr_models.interop.onnx.export_onnx``).

For a checkpoint written by ``esr train`` both outputs hold the EMA weights when it has them,
the raw weights with ``--raw``; for other sources ``--raw`` changes nothing.

Exit codes: 0 all outputs written; 1 an output could not be written (said why; the other one
was still written); 2 usage error found before anything was written (no output asked for, an
output exists without ``--overwrite``, unknown model, missing optional package).
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
import warnings
from pathlib import Path

import torch

from ..arch import weights
from ..infer.loading import MODEL_NAMES, load
from ..interop.onnx import DEFAULT_OPSET, MAX_OPSET, MIN_OPSET, export_onnx
from ..training.models import deploy, trainable
from .common import UsageError, run


def add_parser(sub) -> None:
    p = sub.add_parser(
        "export", help="write a deploy checkpoint (-o) and/or an ONNX model (--onnx)",
        description="Export a model: the deploy-form checkpoint in the upstream layout (-o) and/or "
                    "an ONNX graph with dynamic batch, height and width (--onnx).")
    p.add_argument("source", metavar="SOURCE",
                   help=f"model name ({', '.join(MODEL_NAMES)}) or checkpoint path (deploy, or written by esr train)")
    p.add_argument("-o", "--output", dest="out", metavar="OUT.pth",
                   help="write the deploy checkpoint (upstream key layout) here")
    p.add_argument("--onnx", metavar="OUT.onnx", help="write the ONNX model here")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET,
                   help=f"ONNX opset, {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    p.add_argument("--raw", action="store_true",
                   help="for a checkpoint written by esr train: the raw weights, not the EMA ones")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_export)


def _is_training_checkpoint(path: Path) -> bool:
    # Same test as esr_models.training.models: a dict with the "arch" config and "model" weights.
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return False  # esr_models.load will say what is wrong with the file
    return isinstance(state, dict) and "arch" in state and "model" in state


def deploy_model(source: str, use_ema: bool = True):
    """The deploy (reference) model of ``source``, float32 on the CPU, in eval mode."""
    if source.lower() not in MODEL_NAMES and _is_training_checkpoint(Path(source)):
        return deploy(trainable(source, use_ema=use_ema)).eval()
    return load(source)


def _checkpoint_path(source: str) -> str:
    """A model name's checkpoint file (found, or downloaded, as esr_models.load finds it)."""
    return str(weights.resolve(source.lower())) if source.lower() in weights.CHECKPOINTS else source


def _source_files(source: str) -> tuple[Path, ...]:
    """The checkpoint files an export of ``source`` reads (a model name: wherever its upstream
    file may be found), found without downloading anything."""
    if source.lower() in weights.CHECKPOINTS:
        return tuple(weights.candidate_paths(weights.CHECKPOINTS[source.lower()]))
    return (Path(source),)


def _check(args) -> None:
    if not args.out and not args.onnx:
        raise UsageError("nothing to export: give -o OUT.pth and/or --onnx OUT.onnx")
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise UsageError(f"--opset {args.opset}: use {MIN_OPSET} to {MAX_OPSET} (default {DEFAULT_OPSET})")
    if args.source.lower() not in MODEL_NAMES and not Path(args.source).is_file():
        raise UsageError(f"{args.source}: not a model name ({', '.join(MODEL_NAMES)}) nor a checkpoint file")
    outs = [Path(o) for o in (args.out, args.onnx) if o]
    if len(outs) == 2 and outs[0].resolve() == outs[1].resolve():
        raise UsageError("-o and --onnx name the same file")
    sources = _source_files(args.source)
    for out in outs:
        # Never written, even with --overwrite: the file being exported and the weights folders
        # (replacing an upstream checkpoint there would fail every later load's checksum).
        reason = weights.protected_reason(out, sources)
        if reason:
            raise UsageError(reason)
        if out.is_dir():
            raise UsageError(f"{out} is a folder; give a file name")
        if (out.exists() or out.is_symlink()) and not args.overwrite:
            raise UsageError(f"{out} exists (use --overwrite to replace it)")
    if args.onnx:
        missing = [m for m in ("onnx",) if importlib.util.find_spec(m) is None]
        if missing:
            raise UsageError("--onnx needs the onnx package (and onnxruntime to check the export): "
                             "pip install 'esr-kernels[onnx]'")
    if args.out and importlib.util.find_spec("esr_models.training.deploy_checkpoint") is None:
        raise UsageError("-o needs esr_models.training.deploy_checkpoint, which this install does not have")


def _print_warnings(caught) -> None:
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)


def cmd_export(args) -> int:
    _check(args)  # UsageError (a ValueError): the CLI prints it and exits 2
    failures = 0
    if args.out:
        # Imported here: _check refuses -o with a clear error on an install without it.
        from ..training.deploy_checkpoint import export_deploy_checkpoint

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                written = export_deploy_checkpoint(_checkpoint_path(args.source), args.out, use_ema=not args.raw,
                                                   overwrite=args.overwrite)
            _print_warnings(caught)
            print(f"wrote {written} (deploy checkpoint, upstream layout)")
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            print(f"error: -o {args.out}: {exc}", file=sys.stderr)
            failures += 1
    if args.onnx:
        try:
            model = deploy_model(args.source, use_ema=not args.raw)
            res = export_onnx(model, args.onnx, opset=args.opset, dynamic=True, overwrite=args.overwrite)
            if res.max_abs_error is None:
                check = "not checked: onnxruntime is not installed"
            else:
                shapes = ", ".join("x".join(map(str, s)) for s in res.verified_shapes)
                check = f"ONNX Runtime vs PyTorch max abs error {res.max_abs_error:.2g} on {shapes}"
            print(f"wrote {res.path} (ONNX opset {res.opset}, dynamic batch/height/width, input 'lr' "
                  f"(N, 3, H, W) in [0, 1], H, W >= {model.min_size}; {check})")
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            print(f"error: --onnx {args.onnx}: {exc}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m esr_models.cli.export``: the same as ``esr export``."""
    parser = argparse.ArgumentParser(prog="esr")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser, ["export", *(argv if argv is not None else sys.argv[1:])])


if __name__ == "__main__":
    sys.exit(main())
