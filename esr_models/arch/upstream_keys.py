"""This package's deploy key names -> the upstream checkpoints' (the inverse of
``registry``'s renames): used to write upstream-layout checkpoints (training/deploy_checkpoint.py) and to
name a mismatching file's keys in its own layout (checkpoints.py)."""
from __future__ import annotations

import re

import torch

from .registry import ARCHITECTURES

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


TO_UPSTREAM = {"ifadnet": _ifadnet_upstream, "pfdnlite": _pfdnlite_upstream, "rlfn": _rlfn_upstream}


def to_upstream_keys(name: str, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This package's deploy key names -> the upstream checkpoint's, for architecture ``name``.
    Every mapped key is checked to map back through the registry's rename to where it came
    from, so the two can never drift apart silently."""
    arch = next(a for a in ARCHITECTURES if a.name == name)
    out = {}
    for k, v in sd.items():
        up = TO_UPSTREAM[name](k)
        if arch.rename(up) != k:
            raise AssertionError(f"export key mapping is not the registry's inverse: {k} -> {up} -> {arch.rename(up)}")
        out[up] = v.detach().cpu().float().contiguous().clone()
    missing = [k for k in arch.upstream_keys if k not in out]
    if missing:
        raise AssertionError(f"exported {name} state dict lacks the detection keys {missing}")
    return out
