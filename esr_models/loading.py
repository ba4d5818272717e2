"""``esr_models.load``: name or file -> ready-to-run model in eval mode."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from . import weights
from .registry import detect

MODEL_NAMES = tuple(weights.CHECKPOINTS)


class CheckpointError(ValueError):
    """A checkpoint file that is not a usable state dict."""


def load_state_dict_file(path: str | Path) -> nn.Module:
    """Load a checkpoint file of any supported architecture (detected from its keys).
    Refuses files that are not state dicts and weights that are not finite: a NaN weight
    would make every output NaN without a word."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors of every kind
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a state dict (the file holds a {type(state).__name__}); "
                              "expected a dict of parameter tensors, as torch.save(model.state_dict()) writes")
    _, model = detect(state)
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: weight {key!r} has NaN or Inf values; refusing to load it")
    return model


def load(name_or_path: str | Path, device: str | torch.device = "cpu",
         dtype: torch.dtype = torch.float32, fused: bool = False, backend: str = "auto") -> nn.Module:
    """Build a model by name (``ifadnet``, ``pfdnlite``, ``rlfn``) or checkpoint path, load its
    weights (see ``esr_models.weights`` for where they are found) and return it in eval mode.

    ``fused=True`` swaps in the fused kernels (``load_fused``); ``backend`` is "auto",
    "triton", "cuda" or "cpu" and ``model.backend`` tells what runs."""
    if fused:
        return load_fused(name_or_path, device=device, dtype=dtype, backend=backend)
    key = str(name_or_path).lower()
    if key in weights.CHECKPOINTS:
        path = weights.resolve(key)
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise ValueError(f"unknown model {name_or_path!r}: expected one of {list(MODEL_NAMES)} "
                         "or the path of a checkpoint file")
    model = load_state_dict_file(path)
    return model.to(device=device, dtype=dtype).eval()


def load_fused(name_or_path, device="cpu", dtype=torch.float32, backend: str = "auto") -> nn.Module:
    """Load a model and swap in the fused kernels for ``backend`` (chosen by
    ``esr_kernels.policy.resolve_backend``). ``model.backend`` says what runs: 'triton', 'cpu',
    'cuda', or 'reference' when 'auto' finds no fused kernels for the device and dtype; then a
    warning says so and the unfused reference runs."""
    from esr_kernels.policy import resolve_backend

    from .fusion import fuse_

    device = torch.device(device)
    chosen = resolve_backend(backend, device, dtype)
    model = load(name_or_path, device=device, dtype=dtype)
    if chosen == "reference":
        warnings.warn(f"fused=True: no fused kernels for {device.type}/{dtype} in this build "
                      "(the native CPU extension runs float32; Triton needs CUDA, or "
                      "backend='triton' for its slow CPU interpreter); running the PyTorch reference",
                      stacklevel=2)
    else:
        fuse_(model, chosen)
    model.backend = chosen
    return model


def min_input_size(model: nn.Module) -> int:
    """Smallest H and W the model accepts (its attention pooling needs a 7x7 window)."""
    return int(getattr(model, "min_size", 1))
