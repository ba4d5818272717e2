"""The package's own errors (esr_kernels and esr_models) derive from ``EsrError``: a problem
with what the caller gave (options, files, settings) or with this install, said in one line.
The ``esr`` command reports them as "error: ..." (exit 2); any other exception is a bug and
shows its traceback. Each class keeps a builtin base too (ValueError, RuntimeError, ...), so
that ``except ValueError`` around the API still catches what it always did.
"""
from __future__ import annotations


class EsrError(Exception):
    """Base class of the package's own errors (never raised itself)."""


class InvalidValueError(EsrError, ValueError):
    """A value given by the caller (an option, a setting, a name, a size) that cannot be used."""


class DeviceUnavailableError(EsrError, RuntimeError):
    """A device the caller named that this machine or this torch build cannot use (CUDA on a
    CPU-only torch, no GPU visible, an index past the devices there are)."""
