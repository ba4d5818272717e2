"""Deploy-checkpoint export: a training checkpoint -> the upstream checkpoint layout.

The written file uses the upstream repositories' key names (the inverse of
``esr_models.registry``'s renames, checked key by key against them), so ``esr_models.load``
detects it and the upstream code loads it:

* IFADNet: ``{"params": raw deploy weights, "params_ema": EMA deploy weights}``, the BasicSR
  layout of the upstream file (with ``use_ema=False`` both hold the raw weights, so that
  loaders preferring ``params_ema`` get what was asked for).
* PFDNLite, RLFN: a plain state dict of the chosen weights.
"""
from __future__ import annotations

import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..registry import ARCHITECTURES
from .models import _arch_name, deploy_state_dict, from_training_checkpoint, _is_training_checkpoint

_SLOT_IFADNET = {"0": "c1_r", "1": "c2_r", "2": "c4"}
_SLOT_RLFN = {"0": "c1_r", "1": "c2_r", "2": "c3_r"}
_ESA_BACK = [(".esa.reduce.", ".esa.conv1."), (".esa.skip.", ".esa.conv_f."),
             (".esa.down.", ".esa.conv2."), (".esa.low.", ".esa.conv3."), (".esa.expand.", ".esa.conv4.")]


def _esa_back(k: str) -> str:
    for a, b in _ESA_BACK:
        k = k.replace(a, b)
    return k


def _ifadnet_upstream(k: str) -> str:
    k = re.sub(r"^head\.", "fea_conv.", k)
    k = re.sub(r"^fuse\.", "c1.", k)
    k = re.sub(r"^tail\.", "upsampler.upsampleOneStep.0.", k)
    k = re.sub(r"^blocks\.(\d+)\.", lambda m: f"B{int(m.group(1)) + 1}.", k)
    k = re.sub(r"\.convs\.(\d)\.", lambda m: f".{_SLOT_IFADNET[m.group(1)]}.rbr_reparam.", k)
    k = k.replace(".pointwise.", ".pw.").replace(".depthwise.", ".dw.")
    return _esa_back(k)


def _pfdnlite_upstream(k: str) -> str:
    k = re.sub(r"^tail\.", "tail.0.", k)
    k = re.sub(r"^blocks\.(\d+)\.", lambda m: f"block{int(m.group(1)) + 1}.", k)
    return (k.replace(".attn.reduce.", ".attn.body.0.").replace(".attn.down.", ".attn.body.2.")
            .replace(".attn.expand.", ".attn.body.3."))


def _rlfn_upstream(k: str) -> str:
    k = re.sub(r"^head\.", "conv_1.", k)
    k = re.sub(r"^body_tail\.", "conv_2.", k)
    k = re.sub(r"^tail\.", "upsampler.0.", k)
    k = re.sub(r"^blocks\.(\d+)\.", lambda m: f"block_{int(m.group(1)) + 1}.", k)
    k = re.sub(r"\.convs\.(\d)\.", lambda m: f".{_SLOT_RLFN[m.group(1)]}.", k)
    k = k.replace(".mix.", ".c5.")
    return _esa_back(k)


_TO_UPSTREAM = {"ifadnet": _ifadnet_upstream, "pfdnlite": _pfdnlite_upstream, "rlfn": _rlfn_upstream}


def to_upstream_keys(name: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This package's deploy key names -> the upstream checkpoint's, for architecture ``name``.
    Every mapped key is checked to map back through the registry's rename to where it came
    from, so the two can never drift apart silently."""
    arch = next(a for a in ARCHITECTURES if a.name == name)
    out = {}
    for k, v in sd.items():
        up = _TO_UPSTREAM[name](k)
        if arch.rename(up) != k:
            raise AssertionError(f"export key mapping is not the registry's inverse: {k} -> {up} -> {arch.rename(up)}")
        out[up] = v.detach().cpu().float().contiguous().clone()
    missing = [k for k in arch.upstream_keys if k not in out]
    if missing:
        raise AssertionError(f"exported {name} state dict lacks the detection keys {missing}")
    return out


def _models_from_source(source: str | Path) -> tuple[str, nn.Module, nn.Module | None]:
    """(arch name, raw train-time or deploy model, EMA model or None) from a checkpoint file."""
    state = torch.load(Path(source), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and _is_training_checkpoint(state):
        raw = from_training_checkpoint(state, use_ema=False)
        ema = from_training_checkpoint(state, use_ema=True) if state.get("params_ema") is not None else None
        return raw.arch_config["name"], raw, ema
    from ..loading import load_state_dict_file

    model = load_state_dict_file(source)
    return _arch_name(model), model, None


def _deploy_sd(model: nn.Module) -> dict[str, torch.Tensor]:
    if hasattr(model, "arch_config"):
        return deploy_state_dict(model)
    return {k: v for k, v in model.state_dict().items()}


def export_deploy_checkpoint(source: str | Path, out: str | Path, use_ema: bool = True,
                             overwrite: bool = False) -> Path:
    """Write the deploy form of ``source`` (a checkpoint written by ``esr train``, or any
    deploy checkpoint ``esr_models.load`` reads) to ``out`` in the upstream layout and return
    ``out``. Every re-parameterisable block is merged in float64 and rounded once to float32.
    ``use_ema``: the EMA weights (``params_ema``) when the checkpoint has them; without them the
    raw weights, with a warning. Written through a temp file and a rename; an existing ``out``
    is an error (``FileExistsError``) unless ``overwrite=True``."""
    out = Path(out)
    from ..weights import protected_reason

    reason = protected_reason(out, (Path(source),))
    if reason:  # even with overwrite: the source, and the folders weights are read from
        raise ValueError(reason)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    name, raw, ema = _models_from_source(source)
    if use_ema and ema is None and hasattr(raw, "arch_config"):
        warnings.warn(f"{source} has no EMA weights (params_ema); exporting the raw weights", stacklevel=2)
    chosen = ema if use_ema and ema is not None else raw
    chosen_sd = to_upstream_keys(name, _deploy_sd(chosen))
    if name == "ifadnet":
        payload = {"params": to_upstream_keys(name, _deploy_sd(raw)), "params_ema": chosen_sd}
    else:
        payload = chosen_sd
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 is for the temp file, not the result
        if overwrite:
            os.replace(tmp, out)
        else:
            # A hard link creates ``out`` only if it does not exist, atomically: a file that
            # appeared while we were writing is never replaced.
            try:
                os.link(tmp, out)
            except FileExistsError:
                raise FileExistsError(f"{out} exists; pass overwrite=True to replace it") from None
            except OSError:  # file systems without hard links
                if out.exists():
                    raise FileExistsError(f"{out} exists; pass overwrite=True to replace it") from None
                os.replace(tmp, out)
            if os.path.exists(tmp):
                os.unlink(tmp)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return out
