"""Which kernel backends this install has. Nothing here imports CUDA code eagerly."""
from __future__ import annotations

import importlib
import importlib.util
import os


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_runnable_on_cpu() -> bool:
    """Triton kernels run on CPU tensors only through its interpreter."""
    return os.environ.get("TRITON_INTERPRET") == "1"


# Why a native extension did not import, kept so that an ABI mismatch or a missing library is
# shown (``esr backends``, backend errors) instead of looking like "not built".
IMPORT_ERRORS: dict[str, str] = {}


def _extension(name: str):
    try:
        return importlib.import_module(f"esr_kernels.{name}")
    except ImportError as exc:
        IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        return None


def extension_error(name: str) -> str | None:
    """Why ``esr_kernels.<name>`` cannot be imported (None if it can)."""
    return None if _extension(name) is not None else IMPORT_ERRORS.get(name)


def available_backends() -> dict:
    import torch

    cpu = _extension("_C_cpu") is not None
    return {
        "triton": triton_available(),
        "triton_interpreter": triton_runnable_on_cpu(),
        "cuda_extension": _extension("_C_cuda") is not None,
        "cpu_extension": cpu,
        # Winograd / GEMM convolutions of the CPU extension (built only with AVX-512).
        "cpu_conv_engine": cpu and bool(torch.ops.esr_native.conv_engine_available()),
        "cuda_device": torch.cuda.is_available(),
        # The import errors of the native extensions that did not load (not built, or built
        # against another torch): the reason, not just False.
        "import_errors": {name: IMPORT_ERRORS[name] for name in ("_C_cpu", "_C_cuda") if name in IMPORT_ERRORS},
    }


def empty_cache() -> int:
    """Release the CPU extension's cached output buffers (kept for reuse, up to
    ESR_CPU_CACHE_MB, default 1024, like PyTorch's CUDA caching allocator); returns the bytes
    released. A no-op without the extension."""
    if _extension("_C_cpu") is None:
        return 0
    import torch

    return int(torch.ops.esr_native.empty_cache())

