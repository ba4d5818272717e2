"""Deploy-checkpoint export: a training checkpoint -> the upstream checkpoint layout.

The written file uses the upstream repositories' key names (``esr_models.arch.registry.to_upstream_keys``:
each architecture record's rename table read backwards, checked key by key), so ``esr_models.load``
detects it and the upstream code loads it:

* IFADNet (its record's checkpoint has ``subkey="params_ema"``): ``{"params": raw deploy weights,
  "params_ema": EMA deploy weights}``, the BasicSR layout of the upstream file (with ``use_ema=False`` both hold the raw weights, so that
  loaders preferring ``params_ema`` get what was asked for).
* PFDNLite, RLFN, SPAN: a plain state dict of the chosen weights (SPAN in the challenge files'
  deploy layout, ``<p>.eval_conv.*``: a train-time SPAN is merged, Conv3XC by Conv3XC).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import torch
from torch import nn

from ..arch.checkpoints import CheckpointError, load_state_dict_file
from ..arch.registry import architecture, to_upstream_keys
from ..arch.weights import protected_reason
from .models import _arch_name, deploy_state_dict, from_training_checkpoint, _is_training_checkpoint

def _models_from_source(source: str | Path) -> tuple[str, nn.Module, nn.Module | None]:
    """(arch name, raw train-time or deploy model, EMA model or None) from a checkpoint file."""
    try:
        state = torch.load(Path(source), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors of every kind (as arch/checkpoints.py)
        raise CheckpointError(f"{source}: cannot be read as a PyTorch checkpoint: {exc}") from exc
    if isinstance(state, dict) and _is_training_checkpoint(state):
        raw = from_training_checkpoint(state, use_ema=False)
        ema = from_training_checkpoint(state, use_ema=True) if state.get("params_ema") is not None else None
        return raw.arch_config["name"], raw, ema
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
    subkey = architecture(name).checkpoint.subkey  # "params_ema": the upstream file is BasicSR's layout
    if subkey is not None:
        payload = {"params": to_upstream_keys(name, _deploy_sd(raw)), subkey: chosen_sd}
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
