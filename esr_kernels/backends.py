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


def _extension(name: str):
    try:
        return importlib.import_module(f"esr_kernels.{name}")
    except ImportError:
        return None


def available_backends() -> dict:
    import torch

    return {
        "triton": triton_available(),
        "triton_interpreter": triton_runnable_on_cpu(),
        "cuda_extension": _extension("_C_cuda") is not None,
        "cpu_extension": _extension("_C_cpu") is not None,
        "cuda_device": torch.cuda.is_available(),
    }

