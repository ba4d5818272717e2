"""Backend policy, in one place: what this install has (and why not, when an extension does
not import), which backend "auto" runs for a device and dtype, why a backend cannot run, and
making one. ``esr_models.fuse_``, ``esr_models.load(fused=True)``, the CLI and the benchmarks
all ask here. Nothing here imports triton or CUDA code eagerly.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import torch

from .contract import KernelBackend
from .cpu_backend import CpuBackend
from .cuda_backend import CudaBackend
# Extension loading lives in extensions.py, which the backends use too (IMPORT_ERRORS,
# native_ops: still importable from here).
from .extensions import (CPU_ISA_LEVELS, IMPORT_ERRORS, at_amx_level, bf16_direct_3x3,  # noqa: F401
                         bf16_gemm_available, brgemm_on_amx_tiles, cpu_bf16_gemm,
                         cpu_isa, extension_error, native_ops)
from .extensions import load_extension as _extension
from .triton_backend import TritonBackend

BACKEND_CLASSES: dict[str, type[KernelBackend]] = {"triton": TritonBackend, "cpu": CpuBackend, "cuda": CudaBackend}
BACKENDS = ("auto", *BACKEND_CLASSES)


# ---------------------------------------------------------------- what this install has
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runnable_on_cpu() -> bool:
    """Triton kernels run on CPU tensors only through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# ---------------------------------------------------------------- the CPU extension's ISA level
# (cpu_isa, bf16_gemm_available: extensions.py, beside the extension they ask)


def cpu_dtype_note(dtype: torch.dtype) -> str | None:
    """How the native CPU backend runs a model of ``dtype`` other than float32 (None for
    float32): said by `esr backends` and, once per load, as a note."""
    name = str(dtype).removeprefix("torch.")
    if dtype == torch.bfloat16 and bf16_gemm_available():
        note = ("bfloat16 on CPU: conv GEMMs in bf16 with float32 accumulation ("
                + ("oneDNN's brgemm on AMX tiles, 3x3 convs direct" if bf16_direct_3x3()
                   else "oneDNN's brgemm" if cpu_bf16_gemm() == "brgemm" else "vdpbf16ps") + "), activations and "
                "residuals in float32, output bfloat16")
        return note + (f"; {BF16_SLOWER_ON_AMX}" if bf16_slower_than_float32() else "")
    if dtype in (torch.bfloat16, torch.float16):
        level = (cpu_isa() or {}).get("running_level")
        return (f"{name} on CPU: the fused kernels compute in float32 (the {name} weights are exact in float32) "
                f"and return {name}; no {name} GEMM at this ISA level ({level})"
                + ("" if dtype == torch.bfloat16 else ": float16 kernels (AVX512_FP16, AMX-FP16) are not built"))
    return None


# Issue 29, item 4: where bf16 was measured slower than float32, a bf16 model says so at load.
BF16_SLOWER_ON_AMX = (
    "on this CPU (AMX) the own bf16 GEMM measured slower than float32 (Intel Xeon with AMX, 2 threads, "
    "256x256, 2026-12-07: IFADNet 114 vs 86 ms, PFDNLite 86 vs 67, RLFN 133 vs 96): unset ESR_CPU_GEMM "
    "(auto) or ESR_CPU_GEMM=brgemm runs oneDNN's brgemm on AMX tiles, faster than both")


def bf16_slower_than_float32() -> bool:
    """Whether this CPU's bf16 path is the one measured slower than its float32 path: the own
    bf16 GEMM (avx512_bf16 kernels) at the amx level (README, issue 29's table)."""
    isa = cpu_isa() or {}
    return bf16_gemm_available() and at_amx_level(isa) and cpu_bf16_gemm() == "own"


def cpu_auto_reason() -> str | None:
    """Why "auto" runs the reference instead of the native CPU backend for float32 on this CPU
    (None: it runs the native backend). "auto" must never make a user slower than eager
    PyTorch, so it picks the native backend only at ISA levels where it was measured faster
    than eager channels_last for every model (interleaved in one process, torch capped to the
    same ISA; README, "Speed (CPU, this machine)" and "One build for every x86-64 CPU"). The
    conv engine (Winograd / GEMM convolutions, csrc/cpu) runs at avx512 (1.7-1.8x faster than
    eager) and at avx2 (1.9-2.0x faster than eager capped to AVX2, 256x256). Without it
    (baseline) the fused path is oneDNN's convolutions plus this extension's epilogues, which
    ran slower than eager there (IFADNet 0.28x), so "auto" runs the reference. backend="cpu"
    still runs it."""
    err = extension_error("_C_cpu")
    if err is not None:
        return f"the native CPU extension does not import: {err}"
    isa = cpu_isa()
    if isa["error"]:
        return isa["error"]
    if not torch.ops.esr_native.conv_engine_available():
        return (f"no conv engine at the ISA level that runs ({isa['running_level'] or isa['running']}): the "
                "native backend's oneDNN path measured slower than eager PyTorch there for some models")
    return None


def available_backends() -> dict:
    cpu = _extension("_C_cpu") is not None
    isa = cpu_isa()
    cpu_ok = cpu and not isa["error"]
    auto_reason = cpu_auto_reason()
    return {
        "triton": triton_available(),
        "triton_interpreter": triton_runnable_on_cpu(),
        "cuda_extension": _extension("_C_cuda") is not None,
        "cpu_extension": cpu,
        # The ISA level whose kernels run (chosen at run time from the CPU's features;
        # ESR_CPU_ISA forces a lower one), and the whole story: this CPU's level, the levels built.
        "cpu_isa": isa["running"] if cpu_ok else None,
        "cpu_isa_detail": isa,
        # Winograd / GEMM convolutions of the CPU extension (at the avx2 and avx512 levels).
        "cpu_conv_engine": cpu_ok and bool(torch.ops.esr_native.conv_engine_available()),
        # What "auto" runs for float32 on CPU, and why when it is not the native backend (an
        # ESR_CPU_ISA that cannot run is an error for "auto" too).
        "cpu_auto": ("cpu" if auto_reason is None else f"error: {auto_reason}" if cpu and isa["error"]
                     else f"reference: {auto_reason}"),
        # The conv engine's bf16 GEMM (ESR_CPU_GEMM): "own" or "brgemm", whether oneDNN
        # repacks its weights (AMX tiles), and whether the 3x3 convs then run direct (not
        # Winograd); None without bf16 GEMMs here.
        "cpu_bf16_gemm": ({"gemm": cpu_bf16_gemm(), "brgemm_on_amx_tiles": brgemm_on_amx_tiles(),
                           "direct_3x3": bf16_direct_3x3()}
                          if cpu_ok and bf16_gemm_available() and hasattr(torch.ops.esr_native, "bf16_gemm") else None),
        # How bfloat16 and float16 models run on the native CPU backend here.
        "cpu_dtypes": {str(d).removeprefix("torch."): cpu_dtype_note(d) for d in (torch.bfloat16, torch.float16)}
        if cpu_ok else None,
        "cuda_device": torch.cuda.is_available(),
        # The import errors of the native extensions that did not load (not built, or built
        # against another torch): the reason, not just False.
        "import_errors": {name: IMPORT_ERRORS[name] for name in ("_C_cpu", "_C_cuda") if name in IMPORT_ERRORS},
    }


def empty_cache() -> int:
    """Release the CPU extension's cached output buffers (kept for reuse, up to
    ESR_CPU_CACHE_MB, default 1024, like PyTorch's CUDA caching allocator) and the brgemm
    operands it keeps per bf16 weight (ESR_CPU_GEMM=brgemm); returns the bytes released. A
    no-op without the extension."""
    if _extension("_C_cpu") is None:
        return 0
    return int(torch.ops.esr_native.empty_cache())


def cpu_cache_limit() -> int | None:
    """The byte limit of the CPU extension's buffer cache in force (ESR_CPU_CACHE_MB as parsed
    by ``esr_kernels.env.cpu_cache_limit_bytes``), None for no limit. A RuntimeError without the
    extension, or with one built before the limit could be asked (rebuild it)."""
    ops = native_ops("_C_cpu")
    if not hasattr(ops, "cache_limit"):
        raise RuntimeError("this build of the CPU extension cannot report its cache limit: rebuild it "
                           "(pip install --no-build-isolation -e .)")
    limit = int(ops.cache_limit())
    return None if limit < 0 else limit


# ---------------------------------------------------------------- choosing
def runs(backend: str) -> tuple[tuple[str, ...], tuple[torch.dtype, ...]]:
    """(device types, dtypes) that ``backend``'s kernels run."""
    cls = BACKEND_CLASSES[backend]
    return cls.devices, cls.dtypes


def _why_not(name: str) -> str:
    err = extension_error(name)
    return f" (import failed: {err})" if err else ""


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend that will run: 'triton', 'cpu', 'cuda', or 'reference' (only for 'auto':
    no fused kernels for this device and dtype in this build). A named backend that cannot run
    raises RuntimeError saying why."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    device = torch.device(device)
    if backend == "auto":
        # On CUDA: Triton. No GPU measurement of the native CUDA kernels is recorded in this
        # repository yet (benchmarks/results/), so auto does not choose them.
        if device.type == "cuda" and triton_available():
            return "triton"
        if device.type == "cpu" and dtype in CpuBackend.dtypes and extension_error("_C_cpu") is None:
            _check_cpu_isa()
            return "cpu" if cpu_auto_reason() is None else "reference"
        return "reference"
    devices, dtypes = runs(backend)
    if device.type not in devices:
        raise RuntimeError(f"backend {backend!r} runs on {' or '.join(devices)} tensors, not {device.type}")
    if dtype not in dtypes:
        raise RuntimeError(f"backend {backend!r} runs {', '.join(str(d).removeprefix('torch.') for d in dtypes)}"
                           f" only, not {str(dtype).removeprefix('torch.')}")
    if backend == "cuda" and extension_error("_C_cuda") is not None:
        raise RuntimeError("backend 'cuda' needs the native esr_kernels CUDA extension, which this build does "
                           "not have (see `esr backends`)" + _why_not("_C_cuda"))
    if backend == "cpu" and extension_error("_C_cpu") is not None:
        raise RuntimeError("backend 'cpu' needs the native esr_kernels extension, which this build does not "
                           "have: install with `pip install --no-build-isolation -e .` (see `esr backends`)"
                           + _why_not("_C_cpu"))
    if backend == "cpu":
        _check_cpu_isa()
    if backend in ("triton", "cuda") and not triton_available():
        raise RuntimeError(f"backend {backend!r} needs triton: pip install -e '.[triton]'")
    if backend == "triton" and device.type == "cpu" and "triton" in sys.modules and not triton_runnable_on_cpu():
        raise RuntimeError("Triton kernels run on CPU tensors only under TRITON_INTERPRET=1, which must be set "
                           "before triton is first imported")
    return backend


def _check_cpu_isa() -> None:
    """A RuntimeError when ESR_CPU_ISA asks for a level that cannot run (above the CPU's, or
    not a level): the user asked for something explicit, so it is an error, not a fallback."""
    isa = cpu_isa()
    if isa is not None and isa["error"]:
        raise RuntimeError(f"the native CPU backend cannot run: {isa['error']}")


def auto_reference_reason(device, dtype: torch.dtype) -> str:
    """Why "auto" runs the PyTorch reference for ``device`` and ``dtype`` (for warnings): on a CPU
    in float32 the native backend's own reason (an ISA level where it was not measured faster
    than eager, or an extension that does not import), otherwise what each backend runs."""
    device = torch.device(device)
    if device.type == "cpu" and dtype in CpuBackend.dtypes:
        why = cpu_auto_reason()
        if why:
            return why
    return (f"no fused kernels for {device.type}/{str(dtype).removeprefix('torch.')} in this build (the native "
            "CPU extension runs float32, bfloat16 and float16; Triton needs CUDA, or backend='triton' for its "
            "slow CPU interpreter)")


def backend_unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run fused kernels on ``device`` (None if it can). 'auto' counts as
    unavailable when it would fall back to the reference: a benchmark must not call that fused."""
    try:
        chosen = resolve_backend(backend, device)
    except (RuntimeError, ValueError) as exc:
        return str(exc)
    if chosen == "reference":
        if torch.device(device).type == "cpu" and cpu_auto_reason() is not None:
            return f"'auto' runs the reference on this CPU: {cpu_auto_reason()}"
        return f"no fused kernels for {torch.device(device).type} in this build"
    if chosen == "triton" and torch.device(device).type == "cpu":
        return "Triton on CPU is the interpreter: correctness only, not timed"
    return None


def make_backend(name: str, device: torch.device) -> KernelBackend:
    """An instance of backend ``name`` (as resolved by ``resolve_backend``) for ``device``."""
    if name == "triton" and torch.device(device).type == "cpu":
        os.environ["TRITON_INTERPRET"] = "1"  # asked for explicitly: slow, but runs
    if name not in BACKEND_CLASSES:
        raise ValueError(f"no kernel backend {name!r} to fuse with")
    return BACKEND_CLASSES[name]()
