"""The architectures this package has (``ARCHITECTURES``: one ``Architecture`` record per model
file, record.py), looked up by name or model; detection from a state dict alone (as spandrel
does); and our keys -> the upstream checkpoints' (``to_upstream_keys``)."""
from __future__ import annotations

import torch
from torch import nn

from esr_kernels.errors import EsrError

from . import ifadnet, pfdnlite, rlfn, span
from .record import Architecture

# In detection order (the first whose identifying keys are all present wins). A new model: its
# file, with its ARCHITECTURE record, and one entry here.
ARCHITECTURES: tuple[Architecture, ...] = (ifadnet.ARCHITECTURE, pfdnlite.ARCHITECTURE, rlfn.ARCHITECTURE,
                                           span.ARCHITECTURE)


class UnknownArchitectureError(EsrError, ValueError):
    """The state dict matches none of the known architectures."""


def architecture(name: str) -> Architecture:
    """The record of the architecture called ``name``, or serving the model ``name`` (a
    variant's: "spantiny" -> SPAN's record); KeyError for an unknown one."""
    for arch in ARCHITECTURES:
        if name in arch.model_names:
            return arch
    raise KeyError(name)


def architecture_of(model: nn.Module) -> Architecture | None:
    """The record of the architecture ``model`` is (an instance of its class, train-time
    subclasses included), or None."""
    return next((arch for arch in ARCHITECTURES if isinstance(model, arch.cls)), None)


def unwrap(state: dict) -> dict[str, torch.Tensor]:
    """Strip the usual training wrappers (BasicSR's params_ema/params, 'state_dict', DDP's
    'module.' prefix)."""
    for key in ("params_ema", "params", "state_dict", "model"):
        if isinstance(state.get(key), dict):
            state = state[key]
            break
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def detect(state: dict) -> tuple[str, nn.Module]:
    """Return ``(arch name, model with the weights loaded)`` for a state dict in the upstream
    or in this package's layout. Raises UnknownArchitectureError naming what was expected."""
    sd = unwrap(state)
    for arch in ARCHITECTURES:
        if all(k in sd for k in arch.upstream_keys):
            mapped = {arch.rename(k): v for k, v in arch.deploy_form(sd).items()}
        elif all(k in sd for k in arch.own_keys):
            mapped = sd
        else:
            continue
        model = arch.build(mapped)
        model.load_state_dict(mapped, strict=True)
        return arch.name, model
    expected = "; ".join(f"{a.name}: {', '.join(a.upstream_keys)}" for a in ARCHITECTURES)
    sample = ", ".join(list(sd)[:5]) or "(no tensors)"
    raise UnknownArchitectureError(
        f"state dict matches no known architecture. Expected keys of one of [{expected}]; "
        f"got {len(sd)} tensors starting with: {sample}")


def to_upstream_keys(name: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This package's deploy key names -> the upstream checkpoint's, for architecture ``name``
    (its rename table read backwards). Every mapped key is checked to map back to where it came
    from, so that a table that is not one-to-one can never write a file that loads wrongly."""
    arch = architecture(name)
    out = {}
    for k, v in sd.items():
        up = arch.to_upstream(k)
        if arch.rename(up) != k:
            raise AssertionError(f"export key mapping is not the rename table's inverse: {k} -> {up} -> {arch.rename(up)}")
        out[up] = v.detach().cpu().float().contiguous().clone()
    missing = [k for k in arch.upstream_keys if k not in out]
    if missing:
        raise AssertionError(f"exported {name} state dict lacks the detection keys {missing}")
    return out
