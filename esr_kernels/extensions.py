"""Loading the native extensions (esr_kernels._C_cpu, _C_cuda) with their fakes (native.py), and
why one did not import. The backends load their extension here and policy.py reports on it:
this module imports neither, so neither depends on the other to load.
"""
from __future__ import annotations

import importlib

import torch

# Why a native extension did not import, kept so that an ABI mismatch or a missing library is
# shown (``esr backends``, backend errors) instead of looking like "not built".
IMPORT_ERRORS: dict[str, str] = {}


def load_extension(name: str):
    """The module ``esr_kernels.<name>``, or None (the reason kept in IMPORT_ERRORS)."""
    try:
        return importlib.import_module(f"esr_kernels.{name}")
    except ImportError as exc:
        IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        return None


def extension_error(name: str) -> str | None:
    """Why ``esr_kernels.<name>`` cannot be imported (None if it can)."""
    return None if load_extension(name) is not None else IMPORT_ERRORS.get(name)


def native_ops(name: str):
    """Import the native extension ``name`` ("_C_cpu" or "_C_cuda") with the Python fakes of
    its ops, and return ``torch.ops.esr_native``; a RuntimeError keeps the import error."""
    if load_extension(name) is None:
        raise RuntimeError(f"the native extension esr_kernels.{name} does not import: {IMPORT_ERRORS.get(name)}")
    # Imported here, not at the top: the fakes register against the op schemas, which exist
    # only once the extension has loaded.
    from . import native  # noqa: F401  fake implementations (torch.compile, opcheck)

    return torch.ops.esr_native
