"""IFADNet (NTIRE 2024 ESR, team ECNU_MViC), deploy form."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import (ESA, AffineInputConv2d, BlueprintConv, ConcatFuse, PixelShuffleTail, check_input,
                     conv3x3, gelu)
from .record import ESA_RENAMES, Architecture, Checkpoint, KeyRenames, count_blocks, common_hyperparameters

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)


class BFEB(nn.Module):
    """Three blueprint shallow blocks, GELU after each, plus the block residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(BlueprintConv(channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs:
            out = gelu(conv(out))
        return out + x


class RFMB(nn.Module):
    """Three dense 3x3 convs with GELU, ESA, plus the block residual."""

    def __init__(self, channels: int, esa_channels: int):
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(3))
        self.esa = ESA(channels, esa_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs:
            out = gelu(conv(out))
        return self.esa(out) + x


class IFADNet(nn.Module):
    """Input (N, 3, H, W) float in [0, 1]; output (N, 3, 4H, 4W) in [0, 1] units, unclamped.
    H, W >= ``min_size`` (ESA pooling)."""

    min_size = ESA.min_size

    def __init__(self, channels: int = 36, num_blocks: int = 6, esa_channels: int = 16,
                 scale: int = 4, in_channels: int = 3):
        super().__init__()
        self.scale = scale
        self.head = AffineInputConv2d(in_channels, channels, in_shift=DIV2K_MEAN)
        self.blocks = nn.ModuleList(
            BFEB(channels) if i % 2 == 0 else RFMB(channels, esa_channels) for i in range(num_blocks))
        self.fuse = ConcatFuse(channels * num_blocks, channels)
        self.tail = PixelShuffleTail(channels, scale, in_channels, out_shift=DIV2K_MEAN)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.min_size, "IFADNet", self.head.weight)
        head = self.head(x)
        outs, out = [], head
        for block in self.blocks:
            out = block(out)
            outs.append(out)
        return self.tail(self.fuse(outs, head), x)


def _hyperparameters(sd: dict) -> dict:
    return dict(num_blocks=count_blocks(sd), esa_channels=sd["blocks.1.esa.reduce.weight"].shape[0],
                **common_hyperparameters(sd))


ARCHITECTURE = Architecture(
    name="ifadnet", display="IFADNet", cls=IFADNet,
    checkpoint=Checkpoint(
        "team33_IFADNet.pth",
        "fd653ab692a479f81893fcf6324edb228ab7dc313a5146ba6886999a024ea3cb",
        "https://github.com/BhJia/NTIRE2024_ESR/raw/main/model_zoo/team33_IFADNet.pth",
        subkey="params_ema"),
    upstream_keys=("fea_conv.weight", "B1.c1_r.rbr_reparam.pw.weight", "c1.weight"),
    own_keys=("head.weight", "blocks.0.convs.0.pointwise.weight", "fuse.weight"),
    renames=KeyRenames((("^fea_conv.", "^head."), ("^c1.", "^fuse."), ("^upsampler.upsampleOneStep.0.", "^tail."),
                        ("^B{n}.", "^blocks.{i}."), (".c1_r.rbr_reparam.", ".convs.0."),
                        (".c2_r.rbr_reparam.", ".convs.1."), (".c4.rbr_reparam.", ".convs.2."),
                        (".pw.", ".pointwise."), (".dw.", ".depthwise."), *ESA_RENAMES)),
    hyperparameters=_hyperparameters,
    # Measured peak RSS growth of 256x256 and 768x768 CPU forwards, reference / fused: 3052 / 1608
    # (2026-11-22); the bound, with a margin, is the reference's, so it holds for both paths.
    peak_bytes_per_pixel=3500)
