"""``esr_models.load``: name or file -> ready-to-run model in eval mode."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from esr_kernels.errors import EsrError, InvalidValueError
from esr_kernels.policy import auto_reference_reason, resolve_backend

from . import weights
from .fusion import fuse_
from .registry import ARCHITECTURES, IFADNet, PFDNLite, RLFN, UnknownArchitectureError, detect, unwrap
from .upstream_keys import TO_UPSTREAM

MODEL_NAMES = tuple(weights.CHECKPOINTS)


class CheckpointError(EsrError, ValueError):
    """A checkpoint file that is not a usable state dict."""


_DISPLAY = {"ifadnet": "IFADNet", "pfdnlite": "PFDNLite", "rlfn": "RLFN"}


def _key_list(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _default_keys(name: str) -> dict[bool, list[str]]:
    """{upstream layout?: keys} of the architecture's upstream configuration."""
    own = list({"ifadnet": IFADNet, "pfdnlite": PFDNLite, "rlfn": RLFN}[name]().state_dict())
    return {False: own, True: [TO_UPSTREAM[name](k) for k in own]}


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
    mapped = {arch.rename(k): v for k, v in sd.items()} if upstream else dict(sd)
    try:
        expected = list(arch.build(mapped).state_dict())
        if upstream:
            expected = [TO_UPSTREAM[arch.name](k) for k in expected]
    except Exception:  # the hyper-parameters themselves cannot be read: the upstream configuration
        expected = list(_default_keys(arch.name)[upstream])
    have = set(sd)
    missing = [k for k in expected if k not in have]
    unexpected = [k for k in sd if k not in set(expected)]
    parts = [f"detected architecture {_DISPLAY[arch.name]} ({'upstream' if upstream else 'esr_models'} key "
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
        raise InvalidValueError(f"unknown model {name_or_path!r}: expected one of {list(MODEL_NAMES)} "
                                "or the path of a checkpoint file")
    model = load_state_dict_file(path)
    return model.to(device=device, dtype=dtype).eval()


def load_fused(name_or_path, device="cpu", dtype=torch.float32, backend: str = "auto") -> nn.Module:
    """Load a model and swap in the fused kernels for ``backend`` (chosen by
    ``esr_kernels.policy.resolve_backend``). ``model.backend`` says what runs: 'triton', 'cpu',
    'cuda', or 'reference' when 'auto' finds no fused kernels for the device and dtype; then a
    warning says so and the unfused reference runs."""
    device = torch.device(device)
    chosen = resolve_backend(backend, device, dtype)
    model = load(name_or_path, device=device, dtype=dtype)
    if chosen == "reference":
        warnings.warn(f"fused=True: {auto_reference_reason(device, dtype)}; running the PyTorch reference",
                      stacklevel=2)
    else:
        fuse_(model, chosen)
    model.backend = chosen
    return model


def min_input_size(model: nn.Module) -> int:
    """Smallest H and W the model accepts (its attention pooling needs a 7x7 window)."""
    return int(getattr(model, "min_size", 1))
