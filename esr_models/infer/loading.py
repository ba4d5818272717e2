"""``esr_models.load``: name or file -> ready-to-run model in eval mode (reference, or fused for
a backend)."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from esr_kernels.errors import DeviceUnavailableError, InvalidValueError
from esr_kernels.policy import auto_reference_reason, resolve_backend

from ..arch import weights
from ..arch.checkpoints import load_state_dict_file
from ..fused.fusion import fuse_resolved

MODEL_NAMES = tuple(weights.CHECKPOINTS)


def load(name_or_path: str | Path, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32, fused: bool = False, backend: str = "auto") -> nn.Module:
    """Build a model by name (``ifadnet``, ``pfdnlite``, ``rlfn``) or checkpoint path, load its
    weights (see ``esr_models.arch.weights`` for where they are found) and return it in eval mode.

    ``fused=True`` swaps in the fused kernels (``load_fused``); ``backend`` is "auto",
    "triton", "cuda" or "cpu" and ``model.backend`` tells what runs."""
    device = check_device(device)
    if fused:
        return load_fused(name_or_path, device=device, dtype=dtype, backend=backend)
    key = str(name_or_path).lower()
    if key in weights.CHECKPOINTS:
        path = weights.resolve(key)
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise InvalidValueError(f"unknown model {name_or_path!r}: expected one of {list(MODEL_NAMES)} "
                                "or the path of a checkpoint file")
    model = load_state_dict_file(path)
    return model.to(device=device, dtype=dtype).eval()


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, checked before anything is loaded or moved: a CUDA device
    this machine cannot use is a DeviceUnavailableError saying why (not torch's bare
    AssertionError from deep inside ``.to()``), a name that is no device an InvalidValueError."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InvalidValueError(f"device {device!r} is not a device name ({exc})") from None
    if device.type == "cuda":
        if torch.version.cuda is None and torch.version.hip is None:
            raise DeviceUnavailableError(f"device {str(device)!r}: this torch is a CPU-only build (no CUDA); "
                                         "use device='cpu' or install a CUDA build of torch")
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(f"device {str(device)!r}: no CUDA device is visible; use device='cpu'")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA "
                                         "device(s) are visible")
    return device


def load_fused(name_or_path, device="cpu", dtype=torch.float32, backend: str = "auto") -> nn.Module:
    """Load a model and swap in the fused kernels for ``backend`` (chosen by
    ``esr_kernels.policy.resolve_backend``). ``model.backend`` says what runs: 'triton', 'cpu',
    'cuda', or 'reference' when 'auto' finds no fused kernels for the device and dtype; then a
    warning says so and the unfused reference runs."""
    device = check_device(device)
    return load_for_backend(name_or_path, device, dtype, resolve_backend(backend, device, dtype), _stacklevel=3)


def load_for_backend(name_or_path, device: torch.device, dtype: torch.dtype, chosen: str,
                     _stacklevel: int = 2) -> nn.Module:
    """``load_fused`` for a backend already resolved (``resolve_backend``'s answer for this
    device and dtype: 'triton', 'cpu', 'cuda' or 'reference'), which is not checked again:
    the commands resolve ``--backend`` once, then load through here."""
    model = load(name_or_path, device=device, dtype=dtype)
    if chosen == "reference":
        warnings.warn(f"fused=True: {auto_reference_reason(device, dtype)}; running the PyTorch reference",
                      stacklevel=_stacklevel)
    else:
        fuse_resolved(model, chosen)
    model.backend = chosen
    return model


def min_input_size(model: nn.Module) -> int:
    """Smallest H and W the model accepts (``min_size``: what its attention pooling needs)."""
    return int(getattr(model, "min_size", 1))
