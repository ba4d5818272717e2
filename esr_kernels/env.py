"""The environment variables of esr_kernels that hold numbers or choices, parsed here and nowhere else:
the ``esr`` command checks them up front (esr_models/cli/common.py, ``check_environment``) and
the Python API applies them when the CPU extension first loads (extensions.py), with the same
answer and the same error. The C++ extension reads none of them.
"""
from __future__ import annotations

import os

from .errors import InvalidValueError

CPU_CACHE_VAR = "ESR_CPU_CACHE_MB"
CPU_CACHE_DEFAULT_MB = 1024
# Limits above this (1 PiB) are "no limit": no machine holds that much, and any bigger number,
# however many digits, means the same (instead of overflowing a 64-bit byte count).
CPU_CACHE_NO_LIMIT_BYTES = 1 << 50


def cpu_cache_limit_bytes() -> int | None:
    """The CPU extension's buffer-cache limit in bytes from ESR_CPU_CACHE_MB (a whole number of
    megabytes, default 1024, 0 disables caching), or None for no limit (a value above 2**50
    bytes). Anything that is not a whole number is an InvalidValueError naming the variable."""
    text = os.environ.get(CPU_CACHE_VAR, "").strip()
    if not text:
        return CPU_CACHE_DEFAULT_MB << 20
    # isascii: int() would also take "٣" or "1_000"; the variable is plain digits.
    if not (text.isascii() and text.isdigit()):
        raise InvalidValueError(f"environment variable {CPU_CACHE_VAR}={text!r}: expected a whole number of "
                                f"megabytes (0 or more; default {CPU_CACHE_DEFAULT_MB}; above 2**30 means no limit)")
    limit = int(text) << 20  # Python ints do not overflow: any number of digits is read exactly
    return None if limit > CPU_CACHE_NO_LIMIT_BYTES else limit


TRITON_CONV_VAR = "ESR_TRITON_CONV"
TRITON_CONV_CHOICES = ("auto", "v1", "v2")


def triton_conv_choice() -> str:
    """Which Triton dense-conv kernel to run, from ESR_TRITON_CONV: "auto" (default: what the
    last lent GPU measured faster, ``esr_kernels.triton.configs.AUTO_CONV``), "v1" (the
    small-tile kernel) or "v2" (the tensor-core implicit GEMM). Anything else is an
    InvalidValueError naming the variable."""
    text = os.environ.get(TRITON_CONV_VAR, "").strip().lower() or "auto"
    if text not in TRITON_CONV_CHOICES:
        raise InvalidValueError(f"environment variable {TRITON_CONV_VAR}={os.environ[TRITON_CONV_VAR]!r}: "
                                f"expected one of {', '.join(TRITON_CONV_CHOICES)}")
    return text


CPU_GEMM_VAR = "ESR_CPU_GEMM"
CPU_GEMM_CHOICES = ("auto", "own", "brgemm")
# What "auto" runs, by measurement (README, "bf16 GEMM: own micro-kernel or oneDNN's brgemm"):
# brgemm where it runs on AMX tiles (the amx ISA level; Intel Xeon with AMX, 2 threads, 256x256:
# whole models 1.3-1.8x faster than the own kernel, and the 3x3 convs direct instead of
# Winograd), the own micro-kernel elsewhere (AMD EPYC, avx512_bf16: it was 2-7% faster than
# brgemm). esr_kernels.extensions resolves it when the extension loads.
CPU_GEMM_AUTO = "brgemm on AMX tiles, else own"


def cpu_gemm_choice() -> str:
    """The bf16 GEMM of the CPU conv engine, from ESR_CPU_GEMM: "own" (its micro-kernel,
    csrc/cpu/gemm_bf16.h) or "brgemm" (oneDNN's batch-reduce GEMM through ATen: AMX tiles where
    the CPU has them) or "auto" (default: ``CPU_GEMM_AUTO``, resolved where the extension
    loads). Anything else is an InvalidValueError naming the variable."""
    text = os.environ.get(CPU_GEMM_VAR, "").strip().lower() or "auto"
    if text not in CPU_GEMM_CHOICES:
        raise InvalidValueError(f"environment variable {CPU_GEMM_VAR}={os.environ[CPU_GEMM_VAR]!r}: "
                                f"expected one of {', '.join(CPU_GEMM_CHOICES)}")
    return text
