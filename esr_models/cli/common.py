"""What the ``esr`` command and its sub-commands share: ``UsageError``, the device, backend and
environment checks, loading the model an option names, the output extension, and ``run``, which
runs a parsed command under one error policy. The command modules of this package (upscale,
evaluate, export, train, ...) import from here; nothing here imports them.
"""
from __future__ import annotations

import argparse
import os
import sys
import traceback
import warnings
from pathlib import Path

import torch

from esr_kernels.env import cpu_cache_limit_bytes
from esr_kernels.errors import EsrError
from esr_kernels.policy import CPU_ISA_LEVELS, cpu_isa, resolve_backend, triton_available

from ..infer.loading import MODEL_NAMES, load, load_for_backend
from ..infer.memory import memory_cap_bytes
from ..infer.upscaler import DTYPES
from ..io.media import is_video


class UsageError(EsrError, ValueError):
    """An option or setup problem: reported in one line before anything is written."""


# ---------------------------------------------------------------- checks
def parse_device(name: str) -> torch.device:
    """``--device``'s value as a torch.device (a UsageError if it is not a device name)."""
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a device name ({exc})") from None


def check_device(name: str) -> torch.device:
    """``--device``'s value, refused unless this machine can run it."""
    device = parse_device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        raise UsageError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def check_backend(backend: str, device: torch.device, dtype_name: str) -> str:
    """``--fused --backend`` resolved for this device and dtype (``resolve_backend``: 'triton',
    'cpu', 'cuda' or 'reference'), or a UsageError saying why the backend cannot run here."""
    try:
        return resolve_backend(backend, device, DTYPES[dtype_name])
    except RuntimeError as exc:
        raise UsageError(f"--fused --backend {backend}: {exc}") from None


def require_triton(command: str) -> None:
    """A UsageError unless triton is installed (``command`` needs it whatever the device)."""
    if not triton_available():
        raise UsageError(f"{command} needs triton: pip install -e '.[triton]'")


def check_environment(with_cpu_isa: bool = True) -> None:
    """Every environment variable the tool reads, checked once before anything is done: a bad
    value is a usage error naming the variable (not a failure of every file later), whatever
    the command and its options (a setting the reference path does not read is still wrong).
    ``with_cpu_isa=False`` leaves ESR_CPU_ISA to the command (``esr backends`` reports first)."""
    from esr_kernels.env import cpu_gemm_choice, triton_conv_choice

    from ..fused.graphs import graphs_enabled_by_env

    try:
        memory_cap_bytes()
        cpu_cache_limit_bytes()  # the parser the extension's loader uses (esr_kernels.env)
        triton_conv_choice()  # ESR_TRITON_CONV
        cpu_gemm_choice()  # ESR_CPU_GEMM
        graphs_enabled_by_env()  # ESR_CUDA_GRAPHS
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if with_cpu_isa:
        check_cpu_isa()
    text = os.environ.get("ESR_CPU_CONV_ENGINE", "").strip()
    if text and text not in ("0", "1"):
        raise UsageError(f"environment variable ESR_CPU_CONV_ENGINE={text!r}: expected 0 or 1")
    for name in ("ESR_WEIGHTS_DIR", "ESR_CACHE_DIR"):
        value = os.environ.get(name)
        if value and os.path.lexists(value) and not os.path.isdir(value):
            raise UsageError(f"environment variable {name}={value!r}: not a folder")


def check_cpu_isa() -> None:
    """A UsageError when ESR_CPU_ISA is set to what cannot run: not a level, or a level above
    this CPU's (the extension's own verdict, esr_kernels.policy.cpu_isa). Without the extension
    only the name can be checked. Costs nothing when the variable is unset."""
    text = os.environ.get("ESR_CPU_ISA", "").strip()
    if not text:
        return
    isa = cpu_isa()
    if isa is not None:
        if isa["error"]:
            raise UsageError(f"environment variable {isa['error']}")
    elif text.lower() not in ("auto", *CPU_ISA_LEVELS):
        raise UsageError(f"environment variable ESR_CPU_ISA={text} is not a level: use auto, "
                         f"{', '.join(CPU_ISA_LEVELS)}")


def check_model_options(args) -> None:
    """The options of add_model_args that only mean something together: ``--backend`` picks the
    fused backend, so without ``--fused`` it would be ignored (the reference runs) and is
    refused instead, as ``--ray-workers`` without ``--ray`` is. Then ``args.backend`` is the
    backend to resolve ("auto" when not given)."""
    if not hasattr(args, "backend") or not hasattr(args, "fused"):
        return  # a command without the model options
    if args.backend is not None and not args.fused:
        raise UsageError(f"--backend {args.backend} is an option of --fused (without it the PyTorch "
                         "reference runs): add --fused, or leave --backend out")
    if args.backend is None:
        args.backend = "auto"


# ---------------------------------------------------------------- models and files
def load_model(model: str, device: str, dtype: str, fused: bool = False, backend: str = "auto") -> torch.nn.Module:
    """The model ``--model`` names (a model name or a checkpoint path) on ``--device`` in
    ``--dtype`` (a key of upscaler.DTYPES); with ``fused``, through the same backend resolution
    as ``esr_models.load(fused=True)``, saying on stderr which backend runs."""
    device_, dtype_ = check_device(device), DTYPES[dtype]
    if not fused:
        return load(model, device=device_, dtype=dtype_)
    chosen = check_backend(backend, device_, dtype)  # the one resolution of --backend on this path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_for_backend(model, device_, dtype_, chosen)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"fused backend: {loaded.backend}", file=sys.stderr)
    return loaded


def model_of(args) -> torch.nn.Module:
    """The model ``--model``, ``--device``, ``--dtype``, ``--fused`` and ``--backend`` ask for."""
    return load_model(args.model, args.device, args.dtype, args.fused, args.backend)


def add_model_args(p: argparse.ArgumentParser) -> None:
    """--model, --device, --dtype, --fused, --backend: the options of every command that runs a model."""
    p.add_argument("--model", default="ifadnet", help=f"model name ({', '.join(MODEL_NAMES)}; default: "
                   "ifadnet) or the path of a checkpoint file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--fused", action="store_true", help="run the fused esr_kernels path")
    # Default None, not "auto": so that --backend without --fused is seen (check_model_options),
    # which then sets "auto".
    p.add_argument("--backend", default=None, choices=["auto", "triton", "cuda", "cpu"],
                   help="fused backend, an option of --fused (default: auto)")


def output_extension(src: Path) -> str:
    """Images become PNG (lossless, 16-bit and alpha capable); videos keep their container."""
    return src.suffix.lower() if is_video(src) else ".png"


# ---------------------------------------------------------------- running a command
def run(parser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command (``args.func``) under the error policy of every
    ``esr`` command: the package's own errors (EsrError) and the system's (OSError: a missing
    file, a permission, a full disk) are one line, "error: ...", exit 2; out of memory likewise;
    anything else is a bug: its traceback, a line saying so, exit 1."""
    args = parser.parse_args(argv)
    try:
        check_environment(with_cpu_isa=not getattr(args, "reports_cpu_isa", False))
        check_model_options(args)
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (EsrError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, torch.OutOfMemoryError) as exc:  # the machine's limit, not a bug
        print(f"error: {exc or 'out of memory'}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001  not one of ours: show everything
        traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}\nThis is a bug in esr-kernels (an unexpected error, not a "
              "problem with the options or files): please report it with the traceback above.", file=sys.stderr)
        return 1
