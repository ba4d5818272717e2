"""RLFN_Prune, the NTIRE 2024 ESR challenge baseline, deploy form."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from esr_kernels.spec import LEAKY_SLOPE

from .layers import ESA, AffineInputConv2d, ConvAdd, PixelShuffleTail, check_input, conv1x1, conv3x3
from .record import ESA_RENAMES, Architecture, Checkpoint, KeyRenames, count_blocks, common_hyperparameters

# RLFN was trained on [0, 255] inputs; the model scales internally so that its public
# contract is the same [0, 1] as the others.
PIXEL_RANGE = 255.0


class RLFB(nn.Module):
    """Three 3x3 convs with LeakyReLU(0.05), residual, 1x1 conv, ESA."""

    def __init__(self, channels: int, mid_channels: int, esa_channels: int):
        super().__init__()
        self.convs = nn.ModuleList([conv3x3(channels, mid_channels), conv3x3(mid_channels, mid_channels),
                                    conv3x3(mid_channels, channels)])
        self.mix = conv1x1(channels, channels)
        self.esa = ESA(channels, esa_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for conv in self.convs:
            out = F.leaky_relu(conv(out), LEAKY_SLOPE)
        return self.esa(self.mix(out + x))


class RLFN(nn.Module):
    """Input (N, 3, H, W) float in [0, 1]; output (N, 3, 4H, 4W) in [0, 1] units, unclamped.
    H, W >= ``min_size`` (ESA pooling)."""

    min_size = ESA.min_size

    def __init__(self, channels: int = 46, mid_channels: int = 48, num_blocks: int = 4,
                 esa_channels: int = 16, scale: int = 4, in_channels: int = 3):
        super().__init__()
        self.scale = scale
        self.head = AffineInputConv2d(in_channels, channels, in_scale=PIXEL_RANGE)
        self.blocks = nn.ModuleList(
            RLFB(channels, mid_channels, esa_channels) for _ in range(num_blocks))
        self.body_tail = ConvAdd(channels, channels)
        self.tail = PixelShuffleTail(channels, scale, in_channels, out_divisor=PIXEL_RANGE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.min_size, "RLFN", self.head.weight)
        head = self.head(x)
        out = head
        for block in self.blocks:
            out = block(out)
        return self.tail(self.body_tail(out, head), x)


def _hyperparameters(sd: dict) -> dict:
    return dict(mid_channels=sd["blocks.0.convs.0.weight"].shape[0], num_blocks=count_blocks(sd),
                esa_channels=sd["blocks.0.esa.reduce.weight"].shape[0], **common_hyperparameters(sd))


ARCHITECTURE = Architecture(
    name="rlfn", display="RLFN", cls=RLFN,
    checkpoint=Checkpoint(
        "team00_rlfn.pth",
        "3c9be7b9d7a4bece9b68c83a56a1ffb38010f76413d5f215be6b4be842e18fb2",
        "https://github.com/icandle/BSR/raw/main/model_zoo/team00_rlfn.pth"),
    upstream_keys=("conv_1.weight", "block_1.c1_r.weight", "block_1.esa.conv1.weight"),
    own_keys=("head.weight", "blocks.0.mix.weight", "blocks.0.esa.reduce.weight"),
    renames=KeyRenames((("^conv_1.", "^head."), ("^conv_2.", "^body_tail."), ("^upsampler.0.", "^tail."),
                        ("^block_{n}.", "^blocks.{i}."), (".c1_r.", ".convs.0."), (".c2_r.", ".convs.1."),
                        (".c3_r.", ".convs.2."), (".c5.", ".mix."), *ESA_RENAMES)),
    hyperparameters=_hyperparameters,
    # Measured (as IFADNet's), reference / fused: 1662 / 1080.
    peak_bytes_per_pixel=2000)
