"""What the package knows about one architecture, besides its nn.Module code: an ``Architecture``
record. Each model file (ifadnet.py, pfdnlite.py, rlfn.py, span.py) ends with its ``ARCHITECTURE``;
registry.py collects them, and everything else (detection, checkpoint files, key layouts,
spandrel, the memory estimate, training's export) reads the records.

Key renames are one table per architecture, ``(upstream, ours)`` pairs applied in both
directions: upstream -> ours when a checkpoint is loaded, ours -> upstream when one is written.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn


@dataclass(frozen=True)
class Checkpoint:
    """An upstream checkpoint file: where it is published and its sha256."""
    filename: str
    sha256: str
    url: str
    # Key under which the deploy weights sit inside the file, if not at top level.
    subkey: str | None = None


# ---------------------------------------------------------------- key renames
# One rename is a piece of a key in the upstream spelling and in ours. A leading "^" anchors it at
# the start of the key (else it is replaced wherever it occurs); "{n}" is a block number counting
# from 1 and "{i}" one counting from 0, so ("^B{n}.", "^blocks.{i}.") turns B1. into blocks.0.
# and back.
ESA_RENAMES = ((".esa.conv1.", ".esa.reduce."), (".esa.conv_f.", ".esa.skip."), (".esa.conv2.", ".esa.down."),
               (".esa.conv3.", ".esa.low."), (".esa.conv4.", ".esa.expand."))
_NUMBER = {"{n}": 1, "{i}": 0}  # placeholder -> the number its first block has


def _compile(piece: str) -> tuple[re.Pattern, int | None]:
    """(regex matching ``piece``, base of its block number or None)."""
    anchored = piece.startswith("^")
    text = re.escape(piece[1:] if anchored else piece)
    base = None
    for mark, first in _NUMBER.items():
        if re.escape(mark) in text:
            text, base = text.replace(re.escape(mark), r"(\d+)"), first
    return re.compile(("^" if anchored else "") + text), base


def _template(piece: str) -> str:
    return piece[1:] if piece.startswith("^") else piece


class KeyRenames:
    """An architecture's rename table, ``(upstream, ours)`` pairs, applied in order in either
    direction."""

    def __init__(self, pairs: tuple[tuple[str, str], ...]):
        self.pairs = tuple(pairs)
        self._rules = {False: [self._rule(up, ours) for up, ours in self.pairs],   # upstream -> ours
                       True: [self._rule(ours, up) for up, ours in self.pairs]}    # ours -> upstream

    @staticmethod
    def _rule(src: str, dst: str):
        pattern, src_base = _compile(src)
        template, dst_base = _template(dst), _compile(dst)[1]
        if (src_base is None) != (dst_base is None):
            raise ValueError(f"rename {src!r} <-> {dst!r}: a block number on one side only")

        def replace(m: re.Match) -> str:
            if src_base is None:
                return template
            number = str(int(m.group(1)) - src_base + dst_base)
            return template.replace("{n}", number).replace("{i}", number)
        return pattern, replace

    def _apply(self, key: str, to_upstream: bool) -> str:
        for pattern, replace in self._rules[to_upstream]:
            key = pattern.sub(replace, key)
        return key

    def to_ours(self, key: str) -> str:
        return self._apply(key, False)

    def to_upstream(self, key: str) -> str:
        return self._apply(key, True)


# ---------------------------------------------------------------- reading a state dict
def count_blocks(sd: dict[str, torch.Tensor]) -> int:
    """Number of ``blocks.<i>.`` in a state dict of this package's layout."""
    return len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})


def common_hyperparameters(sd: dict[str, torch.Tensor]) -> dict:
    """channels, scale and in_channels: read from ``head`` and ``tail`` (every architecture has both)."""
    in_channels = sd["head.weight"].shape[1]
    return dict(channels=sd["head.weight"].shape[0], scale=math.isqrt(sd["tail.weight"].shape[0] // in_channels),
                in_channels=in_channels)


# ---------------------------------------------------------------- the record
@dataclass(frozen=True)
class Architecture:
    name: str                     # the model name (esr_models.load("ifadnet"), MODEL_NAMES)
    display: str                  # the class name users see ("IFADNet"): messages, spandrel
    cls: type[nn.Module]          # the deploy-form reference model
    checkpoint: Checkpoint        # the upstream checkpoint (weights.py finds and verifies it)
    # State-dict keys that identify the architecture, in the upstream layout and in ours.
    upstream_keys: tuple[str, ...]
    own_keys: tuple[str, ...]
    renames: KeyRenames           # upstream <-> ours
    # Constructor arguments of ``cls`` read from a state dict in our layout.
    hyperparameters: Callable[[dict], dict]
    # Peak bytes a float32 whole-image forward allocates per LR pixel, batch 1 (memory.py: the
    # tile size when none is given).
    peak_bytes_per_pixel: int
    # Further model names served by this architecture, each with its own upstream checkpoint
    # (SPAN's "spantiny"): (name, checkpoint) pairs.
    variants: tuple[tuple[str, Checkpoint], ...] = ()
    # An upstream-layout state dict -> its deploy form, before the renames (SPAN merges
    # train-time Conv3XC branches); None: checkpoints are deploy form already.
    to_deploy_form: Callable[[dict], dict] | None = None

    @property
    def min_size(self) -> int:
        """Smallest H and W the model takes (its attention's pooling window, from esr_kernels.spec)."""
        return self.cls.min_size

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every model name with a checkpoint of this architecture: its own, then its variants'."""
        return (self.name, *(name for name, _ in self.variants))

    def deploy_form(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """An upstream-layout state dict in deploy form (``to_deploy_form``; unchanged without one)."""
        return sd if self.to_deploy_form is None else self.to_deploy_form(sd)

    def rename(self, key: str) -> str:
        """An upstream key -> ours."""
        return self.renames.to_ours(key)

    def to_upstream(self, key: str) -> str:
        """One of our keys -> the upstream checkpoint's."""
        return self.renames.to_upstream(key)

    def build(self, sd: dict[str, torch.Tensor]) -> nn.Module:
        """A fresh model shaped for ``sd`` (our layout); the weights are not loaded."""
        return self.cls(**self.hyperparameters(sd))
