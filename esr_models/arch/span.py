"""SPAN (Swift Parameter-free Attention Network; NTIRE 2024 ESR winner, XiaomiMM), deploy form.

As the NTIRE 2024 challenge repository and spandrel run it: a 3x3 head on ``(x - mean) * 255``;
SPAB blocks of three 3x3 convs with SiLU and the parameter-free attention
``(o3 + x) * (sigmoid(o3) - 0.5)``; a 3x3 conv on the last block's output; a 1x1 conv over the
concatenation of [head, that conv, block 1's output, the last block's first activation]; a 3x3
conv and a pixel shuffle. Each 3x3 is the merged form of a train-time ``Conv3XC``
(``merge_conv3xc``); checkpoints in spandrel's train-time layout are merged on load
(``deploy_form``), exactly as spandrel merges them before every eval forward.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from esr_kernels import reference as R

from .layers import AffineInputConv2d, ConcatConv, PixelShuffleTail, check_input, conv3x3
from .record import Architecture, Checkpoint, KeyRenames, count_blocks

DIV2K_MEAN = (0.4488, 0.4371, 0.4040)
PIXEL_RANGE = 255.0  # upstream's img_range: the head sees (x - mean) * 255


class SPAB(nn.Module):
    """Swift parameter-free attention block: three 3x3 convs (SiLU after the first two), then
    ``(o3 + x) * (sigmoid(o3) - 0.5)``. Returns that and ``silu(o1)``: upstream's SiLU is in
    place, so the "out1" its block returns (which the model concatenates for the last block) is
    the activated one. (N, C, H, W) in, two (N, C, H, W) out."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.ModuleList(conv3x3(channels, channels) for _ in range(3))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a1 = F.silu(self.convs[0](x))
        o3 = self.convs[2](F.silu(self.convs[1](a1)))
        return R.span_attention(o3, x), a1


class SPAN(nn.Module):
    """Input (N, C_in, H, W) float in [0, 1] (C_in = 3 unless a checkpoint says otherwise);
    output (N, C_in, sH, sW) in [0, 1] units, unclamped. Any H, W >= 1 (no pooling).
    ``norm=False``: the input goes to the head as it is (spandrel's ``no_norm`` checkpoints);
    a ``no_norm`` buffer then marks the state dict, as in spandrel's layout."""

    min_size = 1

    def __init__(self, channels: int = 28, num_blocks: int = 6, scale: int = 4, in_channels: int = 3,
                 norm: bool = True):
        super().__init__()
        if norm and in_channels != len(DIV2K_MEAN):
            raise ValueError(f"SPAN: the input normalisation subtracts an RGB mean; {in_channels}-channel "
                             "input needs norm=False (a no_norm checkpoint)")
        self.scale, self.norm = scale, norm
        if norm:
            self.head = AffineInputConv2d(in_channels, channels, in_scale=PIXEL_RANGE, in_shift=DIV2K_MEAN)
        else:
            self.head = AffineInputConv2d(in_channels, channels)
            self.register_buffer("no_norm", torch.zeros(1))
        self.blocks = nn.ModuleList(SPAB(channels) for _ in range(num_blocks))
        self.body_tail = conv3x3(channels, channels)
        self.fuse = ConcatConv(4 * channels, channels)
        self.tail = PixelShuffleTail(channels, scale, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.min_size, "SPAN", self.head.weight)
        head = self.head(x)
        out, first = head, None
        for block in self.blocks:
            out, a1 = block(out)
            first = out if first is None else first
        # Upstream's order: [out_feature, conv_2(out_b6), out_b1, out_b5_2 (block 6's silu(o1))].
        return self.tail(self.fuse([head, self.body_tail(out), first, a1]), x)


# ---------------------------------------------------------------- train-time Conv3XC
_CONV3XC = re.compile(r"^(.*)\.sk\.weight$")


def merge_conv3xc(sd: dict[str, torch.Tensor], prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The 3x3 (weight, bias) a train-time ``Conv3XC`` at ``prefix`` computes in eval mode:
    1x1 -> 3x3 (unpadded) -> 1x1, plus the 1x1 skip padded to 3x3. The same float32 operations,
    in the same order, as upstream's ``update_params`` (which spandrel runs before every eval
    forward), so the merged conv is bit-identical to theirs."""
    w1, b1 = sd[f"{prefix}.conv.0.weight"], sd[f"{prefix}.conv.0.bias"]
    w2, b2 = sd[f"{prefix}.conv.1.weight"], sd[f"{prefix}.conv.1.bias"]
    w3, b3 = sd[f"{prefix}.conv.2.weight"], sd[f"{prefix}.conv.2.bias"]
    w = F.conv2d(w1.flip(2, 3).permute(1, 0, 2, 3), w2, padding=2).flip(2, 3).permute(1, 0, 2, 3)
    b = (w2 * b1.reshape(1, -1, 1, 1)).sum((1, 2, 3)) + b2
    weight = F.conv2d(w.flip(2, 3).permute(1, 0, 2, 3), w3).flip(2, 3).permute(1, 0, 2, 3)
    bias = (w3 * b.reshape(1, -1, 1, 1)).sum((1, 2, 3)) + b3
    weight = weight + F.pad(sd[f"{prefix}.sk.weight"], [1, 1, 1, 1])
    return weight.contiguous(), (bias + sd[f"{prefix}.sk.bias"]).contiguous()


def deploy_form(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An upstream-layout SPAN state dict with every train-time ``Conv3XC`` (``<p>.sk``,
    ``<p>.conv.{0,1,2}``, ``<p>.eval_conv``) replaced by its merged ``<p>.eval_conv``; the
    branches are the weights (a stored ``eval_conv`` may be stale: upstream recomputes it).
    A deploy-form state dict comes back unchanged."""
    prefixes = [m.group(1) for k in sd if (m := _CONV3XC.match(k))]
    if not prefixes:
        return sd
    out = dict(sd)
    with torch.no_grad():
        for p in prefixes:
            weight, bias = merge_conv3xc({k: v.float() for k, v in sd.items() if k.startswith(p + ".")}, p)
            for k in [k for k in out if k.startswith(p + ".")]:
                del out[k]
            out[f"{p}.eval_conv.weight"], out[f"{p}.eval_conv.bias"] = weight, bias
    return out


def _hyperparameters(sd: dict) -> dict:
    in_channels, channels = sd["head.weight"].shape[1], sd["head.weight"].shape[0]
    out = sd["tail.weight"].shape[0]
    scale = round((out / in_channels) ** 0.5)
    if scale * scale * in_channels != out:
        raise ValueError(f"SPAN: the upsampler's {out} output channels are not {in_channels} image channels "
                         "times a square scale (a checkpoint with other output channels than input channels "
                         "is not supported)")
    return dict(channels=channels, num_blocks=count_blocks(sd), scale=scale, in_channels=in_channels,
                norm="no_norm" not in sd)


ARCHITECTURE = Architecture(
    name="span", display="SPAN", cls=SPAN,
    checkpoint=Checkpoint(
        "team38_span_ch28_slim.pth",
        "6c80f05048313289c6526e5fc9726688d7bb3dfdd6ae3c8b1e7dd09f601e5971",
        "https://github.com/Amazingren/NTIRE2024_ESR/raw/main/model_zoo/team38_span_ch28_slim.pth"),
    # SPAN-tiny (team 39): the same architecture, 26 channels.
    variants=(("spantiny", Checkpoint(
        "team39_spantiny_ch26_slim.pth",
        "30bf224aee5d3fb9cbc7a3bf164a294f957f65c45f5b271052947097922040a5",
        "https://github.com/Amazingren/NTIRE2024_ESR/raw/main/model_zoo/team39_spantiny_ch26_slim.pth")),),
    upstream_keys=("conv_1.eval_conv.weight", "block_1.c1_r.eval_conv.weight", "conv_cat.weight"),
    own_keys=("head.weight", "blocks.0.convs.0.weight", "fuse.weight"),
    renames=KeyRenames((("^conv_1.eval_conv.", "^head."), ("^conv_2.eval_conv.", "^body_tail."),
                        ("^conv_cat.", "^fuse."), ("^upsampler.0.", "^tail."), ("^block_{n}.", "^blocks.{i}."),
                        (".c1_r.eval_conv.", ".convs.0."), (".c2_r.eval_conv.", ".convs.1."),
                        (".c3_r.eval_conv.", ".convs.2."))),
    hyperparameters=_hyperparameters,
    to_deploy_form=deploy_form,
    # Measured peak RSS growth per LR pixel of CPU forwards (as IFADNet's), reference: 1924 at
    # 256x256, 1584 at 768x768 (2026-12-06, AMD EPYC); the bound, with a margin.
    peak_bytes_per_pixel=2400)
