"""Reading a checkpoint file: state dict -> architecture and reference model, and what to say
when a file does not fit (``CheckpointError``). ``infer/loading.py`` builds ``esr_models.load`` on it."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from esr_kernels.errors import EsrError

from .registry import ARCHITECTURES, UnknownArchitectureError, architecture, detect, unwrap


class CheckpointError(EsrError, ValueError):
    """A checkpoint file that is not a usable state dict."""


def _key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _default_keys(name: str) -> dict[bool, list[str]]:
    """{upstream layout?: keys} of the architecture's upstream configuration."""
    arch = architecture(name)
    own = list(arch.cls().state_dict())
    return {False: own, True: [arch.to_upstream(k) for k in own]}


class CheckpointKeysError(CheckpointError):
    """A checkpoint of a recognised architecture whose keys do not fit it."""


def explain_mismatch(state: dict, exc: BaseException | None = None) -> str | None:
    """For a state dict whose architecture is recognised but whose weights do not fit it: which
    architecture was detected, and the missing and unexpected keys (in the file's own key
    layout). None when no architecture is recognised."""
    sd = unwrap(state)
    for arch in ARCHITECTURES:
        upstream = all(k in sd for k in arch.upstream_keys)
        if upstream or all(k in sd for k in arch.own_keys):
            break
    else:
        # An identifying key itself is missing: the architecture whose upstream-configuration
        # keys (either layout) cover most of the file, if they cover most of it.
        best = max(((len(set(sd) & set(keys)) / max(len(sd), 1), arch, up)
                    for arch in ARCHITECTURES for up, keys in _default_keys(arch.name).items()),
                   key=lambda t: t[0], default=(0, None, False))
        if best[0] < 0.5:
            return None
        _, arch, upstream = best
    mapped = {arch.rename(k): v for k, v in arch.deploy_form(sd).items()} if upstream else dict(sd)
    try:
        expected = list(arch.build(mapped).state_dict())
        if upstream:
            expected = [arch.to_upstream(k) for k in expected]
    except Exception:  # the hyper-parameters themselves cannot be read: the upstream configuration
        expected = list(_default_keys(arch.name)[upstream])
    have = set(sd)
    missing = [k for k in expected if k not in have]
    unexpected = [k for k in sd if k not in set(expected)]
    parts = [f"detected architecture {arch.display} ({'upstream' if upstream else 'esr_models'} key "
             f"layout), but the weights do not fit it"]
    parts.append(f"missing {len(missing)} key(s): {_key_list(missing)}" if missing else "missing keys: none")
    parts.append(f"unexpected {len(unexpected)} key(s): {_key_list(unexpected)}" if unexpected
                 else "unexpected keys: none")
    if not missing and not unexpected and exc is not None:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        parts.append(f"({first[:300]})")  # e.g. a size mismatch
    return "; ".join(parts)


class _KeysAndUnknown(CheckpointKeysError, UnknownArchitectureError):
    """Identifying keys are missing, but most keys are those of one architecture."""


def detect_checked(state: dict, path: str | Path | None = None):
    """``registry.detect`` with every failure of a recognised architecture turned into one
    CheckpointError naming the architecture and the missing and unexpected keys."""
    try:
        return detect(state)
    except UnknownArchitectureError as exc:
        why = explain_mismatch(state, exc)
        if why is None:
            raise
        raise _KeysAndUnknown(f"{path}: {why}" if path is not None else why) from None
    except (KeyError, RuntimeError, IndexError, ValueError, TypeError, AttributeError) as exc:
        why = explain_mismatch(state, exc) or f"{type(exc).__name__}: {exc}"
        raise CheckpointKeysError(f"{path}: {why}" if path is not None else why) from None


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
    _, model = detect_checked(state, path)
    for key, value in model.state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"{path}: weight {key!r} has NaN or Inf values; refusing to load it")
    return model
