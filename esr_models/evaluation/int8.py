"""int8 post-training quantisation of a reference model, simulated, and what it costs in PSNR
(issue 29, item 3: the accuracy half; no int8 kernel runs it yet).

Each quantisable conv (a dense conv of more than 3 input channels that does not write the
image: the head and the tail stay float, as in the bf16 path) runs ``esr_kernels.reference.int8_conv``:
per-output-channel int8 weights, its input on a u8 grid whose range was calibrated on images.
Everything else (depthwise convs, attention maths, activations, residuals) stays float32.

- ``calibrate(model, images)``: each conv input's range over the images (per image the
  ``percentile``-th value from each end, then the widest over the images), and each conv's MACs.
- ``simulated_int8(model, calibration, layers)``: within the block, those layers run int8.
- ``psnr_loss(model, calibration, layers, hr_images)``: float PSNR minus int8 PSNR, the
  challenge protocol (``protocol.make_lr`` / ``metrics.psnr``).
- ``choose_layers(...)``: mixed precision within a PSNR-loss bound: every layer int8, then the
  layers that lose most alone go back to float, one by one, until the loss on the
  calibration images is within the bound.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch
from torch import nn

from esr_kernels import reference as R
from esr_kernels.errors import InvalidValueError

from ..arch.layers import PixelShuffleTail
from ..io.images import to_uint8
from .metrics import psnr
from .protocol import make_lr, modcrop

DEFAULT_PERCENTILE = 99.999  # of each input's values, per image: an outlier in 10^5 is clipped


@dataclass
class Calibration:
    """Per quantisable conv (by module name): its input range (lo, hi) and its MACs per
    forward summed over the calibration images (``macs``)."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)
    images: int = 0

    def int8_mac_fraction(self, layers: Iterable[str]) -> float:
        """The share of the quantisable convs' MACs that ``layers`` run."""
        total = sum(self.macs.values())
        return sum(self.macs[n] for n in layers) / total if total else 0.0


def quantisable_convs(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The model's dense convs with more than 3 input channels, the image-writing tail left out."""
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Conv2d) and m.groups == 1 and m.in_channels > 3 and not isinstance(m, PixelShuffleTail)}


@contextlib.contextmanager
def _patched(convs: dict[str, nn.Conv2d], make_forward) -> Iterator[None]:
    """Replace the ``_conv_forward`` of each conv (which nn.Conv2d.forward and its subclasses
    call) by ``make_forward(name, conv)``; restored on exit."""
    try:
        for name, conv in convs.items():
            conv._conv_forward = make_forward(name, conv)
        yield
    finally:
        for conv in convs.values():
            conv.__dict__.pop("_conv_forward", None)


def _tail_value(v: torch.Tensor, percentile: float, largest: bool) -> float:
    """The value with (100 - percentile)% of v beyond it (the extreme itself at 100)."""
    k = max(1, int(v.numel() * (100.0 - percentile) / 100.0))
    tail = torch.topk(v, k, largest=largest, sorted=False).values
    return float(tail.min() if largest else tail.max())


@torch.no_grad()
def calibrate(model: nn.Module, lr_images: Iterable[torch.Tensor], percentile: float = DEFAULT_PERCENTILE) -> Calibration:
    """Run the float model over ``lr_images`` ((1, 3, h, w) float in [0, 1] each) and record
    every quantisable conv's input range and MACs. Raises if no image is given."""
    if not 50.0 < percentile <= 100.0:
        raise InvalidValueError(f"percentile must be in (50, 100], got {percentile}")
    convs = quantisable_convs(model)
    cal = Calibration()

    def recorder(name, conv):
        def forward(x, weight, bias):
            v = x.detach().float().flatten()
            lo, hi = _tail_value(v, percentile, False), _tail_value(v, percentile, True)
            old = cal.ranges.get(name, (lo, hi))
            cal.ranges[name] = (min(old[0], lo), max(old[1], hi))
            y = nn.Conv2d._conv_forward(conv, x, weight, bias)
            cal.macs[name] = cal.macs.get(name, 0) + y.numel() * weight[0].numel()
            return y
        return forward

    with _patched(convs, recorder):
        for x in lr_images:
            model(x)
            cal.images += 1
    if cal.images == 0:
        raise InvalidValueError("calibration needs at least one image")
    return cal


@contextlib.contextmanager
def simulated_int8(model: nn.Module, calibration: Calibration, layers: Iterable[str] | None = None) -> Iterator[None]:
    """Within the block, ``layers`` (default: every quantisable conv) run int8
    (``reference.int8_conv`` with their calibrated input grid); the others run float."""
    convs = quantisable_convs(model)
    names = list(convs) if layers is None else list(layers)
    unknown = [n for n in names if n not in convs or n not in calibration.ranges]
    if unknown:
        raise InvalidValueError(f"not a calibrated quantisable conv of this model: {', '.join(unknown)}")
    weights = {n: R.quantize_weight_int8(convs[n].weight) for n in names}

    def int8_forward(name, conv):
        scale, zero_point = R.activation_qparams(*calibration.ranges[name])
        w_q, w_scale = weights[name]

        def forward(x, weight, bias):
            y = R.int8_conv(x, w_q, w_scale, bias, scale, zero_point, conv.stride[0], conv.padding[0])
            return y.to(x.dtype)
        return forward

    with _patched({n: convs[n] for n in names}, int8_forward):
        yield


def hr_pairs(hr_images: Iterable[torch.Tensor], scale: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(LR (1, 3, h, w) float [0, 1], HR (3, H, W) uint8 modcropped) per HR uint8 image: the
    challenge's bicubic downscale."""
    pairs = []
    for hr in hr_images:
        hr = modcrop(hr, scale)
        pairs.append((make_lr(hr, scale)[None].float() / 255.0, hr))
    return pairs


@torch.no_grad()
def mean_psnr(model: nn.Module, pairs, scale: int) -> float:
    """Mean RGB PSNR (challenge protocol: clamp, round to uint8, border ``scale``)."""
    values = [psnr(to_uint8(model(lr)[0].float()), hr, border=scale) for lr, hr in pairs]
    return sum(values) / len(values)


def psnr_loss(model: nn.Module, calibration: Calibration, pairs, scale: int,
              layers: Iterable[str] | None = None, float_psnr: float | None = None) -> float:
    """Float PSNR minus simulated-int8 PSNR over ``pairs`` (``hr_pairs``), in dB."""
    base = mean_psnr(model, pairs, scale) if float_psnr is None else float_psnr
    with simulated_int8(model, calibration, layers):
        return base - mean_psnr(model, pairs, scale)


@dataclass
class MixedPrecision:
    """``choose_layers``' answer: the int8 layers, the loss they cost on the calibration images,
    each layer's loss alone (dB), and the share of the convs' MACs left in int8."""

    int8_layers: list[str]
    loss_db: float
    solo_loss_db: dict[str, float]
    int8_mac_fraction: float


def choose_layers(model: nn.Module, calibration: Calibration, pairs, scale: int, bound_db: float) -> MixedPrecision:
    """The int8 layers whose PSNR loss on ``pairs`` is within ``bound_db``: start from every
    quantisable conv, and while the loss exceeds the bound, put back in float the remaining
    layer with the largest loss alone. May end with no int8 layer."""
    base = mean_psnr(model, pairs, scale)
    names = list(quantisable_convs(model))
    solo = {n: psnr_loss(model, calibration, pairs, scale, [n], base) for n in names}
    kept = sorted(names, key=lambda n: solo[n])  # least sensitive first
    loss = psnr_loss(model, calibration, pairs, scale, kept, base)
    while kept and loss > bound_db:
        kept.pop()  # the most sensitive left
        loss = psnr_loss(model, calibration, pairs, scale, kept, base) if kept else 0.0
    order = [n for n in names if n in kept]
    return MixedPrecision(order, loss, solo, calibration.int8_mac_fraction(order))
