"""``fuse_(model, backend)``: swaps a model's modules for fused ones (``modules.py``) in
place, through one generic walk over a table of reference type -> fused type, not
per-architecture patching; and the fused model's input checks and repacking.

Which backend runs is decided by ``esr_kernels.policy`` (also for ``load(fused=True)``).
"""
from __future__ import annotations

import warnings

import torch
from torch import nn

from esr_kernels.policy import (auto_reference_reason, bf16_gemm_available, bf16_slower_than_float32, cpu_dtype_note,
                                make_backend, resolve_backend, runs)

from ..arch.layers import InputError
from .graphs import install as install_graphs
from .modules import FUSED_TYPES, _Fused, can_fuse


def fuse_(model: nn.Module, backend: str = "auto") -> dict[str, nn.Module]:
    """Swap, in place, every module of a type in FUSED_TYPES (exact type, outermost first, and
    for plain convs only those the kernels support) for its fused counterpart running on
    ``backend``: "auto" (as ``load(fused=True)``: chosen for the model's device and dtype by
    ``resolve_backend``; where no fused kernels apply, a warning and nothing is swapped),
    "triton", "cpu" or "cuda" (checked by ``resolve_backend`` too). Idempotent. Returns
    {qualified name: replaced module}.

    The fused forward is inference-only (the kernels have no backward): the model's parameters
    stop requiring grad, and a call that would need a gradient raises instead of returning an
    output that claims ``requires_grad`` but never gets one. Inputs are checked as the
    reference checks them, plus the dtypes and devices the backend runs."""
    already = getattr(model, "_esr_fused_backend", None)
    if already is not None:  # idempotent: the rest of the model goes to the same backend
        if backend not in ("auto", already):
            raise ValueError(f"this model is already fused for backend {already!r}, not {backend!r}")
        backend = already
    weight = next(model.parameters())
    chosen = resolve_backend(backend, weight.device, weight.dtype)
    if chosen == "reference":
        warnings.warn(f"fuse_(backend='auto'): {auto_reference_reason(weight.device, weight.dtype)}; "
                      "the model stays the reference", stacklevel=2)
        return {}
    return fuse_resolved(model, chosen, _stacklevel=3)


def fuse_resolved(model: nn.Module, backend: str, _stacklevel: int = 2) -> dict[str, nn.Module]:
    """``fuse_`` for a backend already resolved for the model's device and dtype
    (``resolve_backend``'s answer, not "auto" nor "reference"): not checked again. The one
    resolution happens in ``fuse_``, ``load(fused=True)`` or the command's ``--backend`` check."""
    already = getattr(model, "_esr_fused_backend", None)
    if already is not None and backend != already:
        raise ValueError(f"this model is already fused for backend {already!r}, not {backend!r}")
    weight = next(model.parameters())
    if backend == "cpu" and weight.dtype != torch.float32 and (
            not (weight.dtype == torch.bfloat16 and bf16_gemm_available()) or bf16_slower_than_float32()):
        # float16, or bfloat16 without vdpbf16ps: float32 kernels, said rather than silent; or
        # bf16 where it was measured slower than float32 (an AMX CPU on the own GEMM).
        warnings.warn(f"fuse_: {cpu_dtype_note(weight.dtype)}", stacklevel=_stacklevel)
    kernels = make_backend(backend, weight.device)
    replaced: dict[str, nn.Module] = {}
    fused_types = set(FUSED_TYPES.values())

    def walk(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            qual = f"{prefix}{name}"
            if type(child) in fused_types:
                continue  # already fused: its submodules only hold the adopted parameters
            if can_fuse(child, kernels):
                setattr(parent, name, FUSED_TYPES[type(child)].from_reference(child, kernels))
                replaced[qual] = child
            else:
                walk(child, qual + ".")

    with torch.no_grad():
        walk(model, "")
    if replaced or getattr(model, "_esr_fused_backend", None) is not None:
        model.requires_grad_(False)
        if getattr(model, "_esr_fused_backend", None) is None:
            model.register_forward_pre_hook(_check_fused_input)
            model.register_forward_hook(_output_in_input_dtype)
            install_graphs(model)  # CUDA graphs per input shape on a GPU (graphs.py)
        model._esr_fused_backend = backend
        model._esr_packed_versions = _param_versions(model)
        if not any(h is _note_packed for h in model._load_state_dict_post_hooks.values()):
            model.register_load_state_dict_post_hook(_note_packed)
    return replaced


def repack_(model: nn.Module) -> nn.Module:
    """Pack every fused module of ``model`` again from its current weights. ``load_state_dict``
    and in-place edits of ordinary tensors are followed automatically; call this after changing
    weights any other way (in-place edits of inference tensors, or of weights between calls of a
    ``torch.compile``'d model, which skips the per-call check). Returns ``model``."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _Fused):
                module.repack()
    if getattr(model, "_esr_fused_backend", None) is not None:
        model._esr_packed_versions = _param_versions(model)
    return model


def _note_packed(model: nn.Module, incompatible_keys) -> None:
    """load_state_dict post-hook of a fused model; it runs after its fused modules' own hooks
    (children first), which repacked them: the weights now packed are the current ones."""
    model._esr_packed_versions = _param_versions(model)


def _param_versions(model: nn.Module) -> tuple:
    """Version counters of the state dict's tensors (parameters and persistent buffers, not the
    packs): every in-place change (load_state_dict's copy_, p.mul_(), an optimiser step) bumps
    them. About 0.1 ms a forward."""
    # Tensors made under torch.inference_mode() keep no version counter: not tracked (-1).
    return tuple(-1 if t.is_inference() else t._version for t in model.state_dict(keep_vars=True).values())


def _repack_if_changed(model: nn.Module) -> None:
    """Packs are made from the weights once; if any weight changed since (load_state_dict, an
    in-place edit), pack again, so that a fused model never runs stale weights."""
    if torch.compiler.is_compiling():
        return
    if _param_versions(model) == model._esr_packed_versions:
        return
    repack_(model)


def _output_in_input_dtype(model: nn.Module, args: tuple, out):
    """Forward hook of a fused model: its output in the input's dtype, as the reference returns
    it (the native CPU kernels return float32 for bfloat16 and float16 models)."""
    x = args[0] if args else None
    if isinstance(x, torch.Tensor) and isinstance(out, torch.Tensor) and out.dtype != x.dtype:
        return out.to(x.dtype)
    return out


def _check_fused_input(model: nn.Module, args: tuple) -> None:
    """Forward pre-hook of a fused model: what only a fused model needs checked (the dtypes and
    devices its backend runs, no gradient) and repacking changed weights. The reference's own
    checks (shape, dtype and device against the weights, size, value range) run once, in the
    model's forward, before any kernel: where the input fails them, this hook leaves the
    error to it."""
    x = args[0] if args else None
    if not isinstance(x, torch.Tensor):
        return
    name = type(model).__name__
    head = getattr(model, "head", None)
    weight = getattr(head, "weight", None)
    if isinstance(weight, torch.Tensor) and (x.dtype != weight.dtype or x.device != weight.device):
        return  # this package's SR models: their forward's check_input names the mismatch
    _repack_if_changed(model)
    backend = model._esr_fused_backend
    devices, dtypes = runs(backend)
    if x.dtype not in dtypes:
        raise InputError(f"fused {name} (backend {backend!r}) runs {', '.join(map(str, dtypes))}, not "
                         f"{x.dtype}; use the reference model (esr_models.load(..., fused=False)) for it")
    if x.device.type not in devices:
        raise InputError(f"fused {name} (backend {backend!r}) runs on {' or '.join(devices)}, not {x.device}")
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters())):
        raise RuntimeError(f"fused {name} is inference-only (its kernels have no backward): call it under "
                           "torch.no_grad() or torch.inference_mode() with inputs and parameters that do "
                           "not require grad, or train the reference model (esr_models.load(name))")
