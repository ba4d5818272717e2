"""Architecture detection from a state dict alone (as spandrel does) and key mapping from the
upstream checkpoints' names to this package's module names."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from esr_kernels.errors import EsrError

from .ifadnet import IFADNet
from .pfdnlite import PFDNLite
from .rlfn import RLFN


class UnknownArchitectureError(EsrError, ValueError):
    """The state dict matches none of the known architectures."""


_ESA_RENAMES = [(r"\.esa\.conv1\.", ".esa.reduce."), (r"\.esa\.conv_f\.", ".esa.skip."),
                (r"\.esa\.conv2\.", ".esa.down."), (r"\.esa\.conv3\.", ".esa.low."),
                (r"\.esa\.conv4\.", ".esa.expand.")]

_CONV_SLOT = {"c1_r": "0", "c2_r": "1", "c3_r": "2", "c4": "2"}


def _ifadnet_key(k: str) -> str:
    k = re.sub(r"^fea_conv\.", "head.", k)
    k = re.sub(r"^c1\.", "fuse.", k)
    k = re.sub(r"^upsampler\.upsampleOneStep\.0\.", "tail.", k)
    k = re.sub(r"^B(\d+)\.", lambda m: f"blocks.{int(m.group(1)) - 1}.", k)
    k = re.sub(r"\.(c1_r|c2_r|c4)\.rbr_reparam\.", lambda m: f".convs.{_CONV_SLOT[m.group(1)]}.", k)
    k = k.replace(".pw.", ".pointwise.").replace(".dw.", ".depthwise.")
    for pat, rep in _ESA_RENAMES:
        k = re.sub(pat, rep, k)
    return k


def _pfdnlite_key(k: str) -> str:
    k = re.sub(r"^tail\.0\.", "tail.", k)
    k = re.sub(r"^block(\d+)\.", lambda m: f"blocks.{int(m.group(1)) - 1}.", k)
    k = re.sub(r"\.attn\.body\.0\.", ".attn.reduce.", k)
    k = re.sub(r"\.attn\.body\.2\.", ".attn.down.", k)
    k = re.sub(r"\.attn\.body\.3\.", ".attn.expand.", k)
    return k


def _rlfn_key(k: str) -> str:
    k = re.sub(r"^conv_1\.", "head.", k)
    k = re.sub(r"^conv_2\.", "body_tail.", k)
    k = re.sub(r"^upsampler\.0\.", "tail.", k)
    k = re.sub(r"^block_(\d+)\.", lambda m: f"blocks.{int(m.group(1)) - 1}.", k)
    k = re.sub(r"\.(c1_r|c2_r|c3_r)\.", lambda m: f".convs.{_CONV_SLOT[m.group(1)]}.", k)
    k = re.sub(r"\.c5\.", ".mix.", k)
    for pat, rep in _ESA_RENAMES:
        k = re.sub(pat, rep, k)
    return k


def _count_blocks(sd: dict[str, torch.Tensor]) -> int:
    return len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


def _scale(sd: dict[str, torch.Tensor], in_channels: int) -> int:
    return math.isqrt(sd["tail.weight"].shape[0] // in_channels)


def _build_ifadnet(sd):
    n = _count_blocks(sd)
    return IFADNet(channels=sd["head.weight"].shape[0], num_blocks=n,
                   esa_channels=sd["blocks.1.esa.reduce.weight"].shape[0],
                   scale=_scale(sd, sd["head.weight"].shape[1]), in_channels=sd["head.weight"].shape[1])


def _build_pfdnlite(sd):
    n = _count_blocks(sd)
    kinds = tuple(f"blocks.{i}.conv2.weight" in sd for i in range(n))
    split = sd["blocks.0.conv1.weight"].shape[0] if not kinds[0] else sd[f"blocks.{kinds.index(True)}.conv2.weight"].shape[0]
    return PFDNLite(channels=sd["head.weight"].shape[0], block_kinds=kinds, split=split,
                    attn_channels=sd["blocks.0.attn.reduce.weight"].shape[0],
                    scale=_scale(sd, sd["head.weight"].shape[1]), in_channels=sd["head.weight"].shape[1])


def _build_rlfn(sd):
    return RLFN(channels=sd["head.weight"].shape[0], mid_channels=sd["blocks.0.convs.0.weight"].shape[0],
                num_blocks=_count_blocks(sd), esa_channels=sd["blocks.0.esa.reduce.weight"].shape[0],
                scale=_scale(sd, sd["head.weight"].shape[1]), in_channels=sd["head.weight"].shape[1])


@dataclass(frozen=True)
class Architecture:
    name: str
    # Keys that identify the upstream layout / this package's layout.
    upstream_keys: tuple[str, ...]
    own_keys: tuple[str, ...]
    rename: Callable[[str], str]
    build: Callable[[dict], nn.Module]


ARCHITECTURES = [
    Architecture("ifadnet", ("fea_conv.weight", "B1.c1_r.rbr_reparam.pw.weight", "c1.weight"),
                 ("head.weight", "blocks.0.convs.0.pointwise.weight", "fuse.weight"),
                 _ifadnet_key, _build_ifadnet),
    Architecture("pfdnlite", ("head.weight", "block1.attn.body.0.weight", "tail.0.weight"),
                 ("head.weight", "blocks.0.attn.reduce.weight", "tail.weight"),
                 _pfdnlite_key, _build_pfdnlite),
    Architecture("rlfn", ("conv_1.weight", "block_1.c1_r.weight", "block_1.esa.conv1.weight"),
                 ("head.weight", "blocks.0.mix.weight", "blocks.0.esa.reduce.weight"),
                 _rlfn_key, _build_rlfn),
]


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
            mapped = {arch.rename(k): v for k, v in sd.items()}
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
