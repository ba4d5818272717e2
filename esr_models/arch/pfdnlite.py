"""PFDNLite (NTIRE 2024 ESR, team BSR), deploy form."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import LocalAttention, PixelShuffleTail, check_input, conv3x3
from .record import Architecture, Checkpoint, KeyRenames, count_blocks, common_hyperparameters


class PartialBlock(nn.Module):
    """One PFDN block. ``full=True``: conv1 48->48 + SiLU, then channels [0, split) are replaced
    by SiLU(conv2 of those channels). ``full=False`` (pruned): channels [0, split) of the
    attention output are replaced by SiLU(conv1 48->split of all of it). Then conv3 + SiLU and
    the attention output as residual."""

    def __init__(self, channels: int, split: int, full: bool, attn_channels: int = 16):
        super().__init__()
        self.split, self.full = split, full
        self.attn = LocalAttention(channels, attn_channels)
        self.conv1 = conv3x3(channels, channels if full else split)
        self.conv2 = conv3x3(split, split) if full else None
        self.conv3 = conv3x3(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn(x)
        s = self.split
        if self.full:
            t = F.silu(self.conv1(a))
            t = torch.cat([F.silu(self.conv2(t[:, :s])), t[:, s:]], dim=1)
        else:
            t = torch.cat([F.silu(self.conv1(a)), a[:, s:]], dim=1)
        return F.silu(self.conv3(t)) + a


class PFDNLite(nn.Module):
    """Input (N, 3, H, W) float in [0, 1]; output (N, 3, 4H, 4W) in [0, 1] units, unclamped.
    H, W >= ``min_size`` (LocalAttention pooling)."""

    min_size = LocalAttention.min_size

    def __init__(self, channels: int = 48, block_kinds: tuple[bool, ...] = (True, False, False, True),
                 split: int = 24, attn_channels: int = 16, scale: int = 4, in_channels: int = 3):
        super().__init__()
        self.scale = scale
        self.head = conv3x3(in_channels, channels)
        self.blocks = nn.ModuleList(
            PartialBlock(channels, split, full, attn_channels) for full in block_kinds)
        self.tail = PixelShuffleTail(channels, scale, in_channels, repeat_image=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.min_size, "PFDNLite", self.head.weight)
        out = self.head(x)
        for block in self.blocks:
            out = block(out)
        return self.tail(out, x)


def _hyperparameters(sd: dict) -> dict:
    kinds = tuple(f"blocks.{i}.conv2.weight" in sd for i in range(count_blocks(sd)))
    split = sd["blocks.0.conv1.weight"].shape[0] if not kinds[0] else sd[f"blocks.{kinds.index(True)}.conv2.weight"].shape[0]
    return dict(block_kinds=kinds, split=split, attn_channels=sd["blocks.0.attn.reduce.weight"].shape[0],
                **common_hyperparameters(sd))


ARCHITECTURE = Architecture(
    name="pfdnlite", display="PFDNLite", cls=PFDNLite,
    checkpoint=Checkpoint(
        "team01_pfdnlite.pth",
        "7823f76309249154ff5909ef99cf8601c3e768d80515a21624a9d9539984c4ee",
        "https://github.com/icandle/BSR/raw/main/model_zoo/team01_pfdnlite.pth"),
    upstream_keys=("head.weight", "block1.attn.body.0.weight", "tail.0.weight"),
    own_keys=("head.weight", "blocks.0.attn.reduce.weight", "tail.weight"),
    renames=KeyRenames((("^tail.0.", "^tail."), ("^block{n}.", "^blocks.{i}."), (".attn.body.0.", ".attn.reduce."),
                        (".attn.body.2.", ".attn.down."), (".attn.body.3.", ".attn.expand."))),
    hyperparameters=_hyperparameters,
    # Measured (as IFADNet's), reference / fused: 2279 / 668.
    peak_bytes_per_pixel=2600)
