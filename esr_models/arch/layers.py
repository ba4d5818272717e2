"""Building blocks shared by the reference models (plain PyTorch, deploy form).

All tensors are float NCHW. Every block here is the *reference*: the fused path in
``esr_kernels`` must reproduce these to float32 rounding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from esr_kernels import reference as R
from esr_kernels.errors import EsrError
from esr_kernels.spec import ACT_GELU, POOL_KERNEL


def conv3x3(c_in: int, c_out: int, stride: int = 1, padding: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=padding)


def conv1x1(c_in: int, c_out: int, bias: bool = True) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 1, bias=bias)


def gelu(x: torch.Tensor) -> torch.Tensor:
    # The upstream models use nn.GELU() defaults: the exact erf form, not the tanh one.
    return R.activation(x, ACT_GELU)


class BlueprintConv(nn.Module):
    """Blueprint separable conv: 1x1 pointwise (no bias) then 3x3 depthwise with bias and
    reflect padding. Input and output (N, C, H, W); needs H, W >= 2 for reflect padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.pointwise = conv1x1(channels, channels, bias=False)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels,
                                   padding_mode="reflect")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.depthwise(self.pointwise(x))


class ESA(nn.Module):
    """Enhanced Spatial Attention (RFDN/RLFN form).

    x (N, C, H, W) -> x * sigmoid(expand(up(conv3(maxpool(conv2(reduce(x))))) + skip(reduce(x))))
    ``down`` is 3x3 stride 2 without padding and the max-pool (esr_kernels.spec.POOL_KERNEL) has
    no padding, so H, W >= ``min_size`` (15 for the 7x7 pool).
    """

    min_size = 2 * (POOL_KERNEL - 1) + 3  # down's output must hold one pooling window

    def __init__(self, channels: int, esa_channels: int = 16):
        super().__init__()
        self.reduce = conv1x1(channels, esa_channels)
        self.skip = conv1x1(esa_channels, esa_channels)
        self.down = conv3x3(esa_channels, esa_channels, stride=2, padding=0)
        self.low = conv3x3(esa_channels, esa_channels)
        self.expand = conv1x1(esa_channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.reduce(x)
        low = R.upsample(self.low(R.pool(self.down(r))), x.shape[-2:])
        gate = torch.sigmoid(self.expand(low + self.skip(r)))
        return x * gate


class LocalAttention(nn.Module):
    """PFDNLite's max-pool attention gate.

    x (N, C, H, W) -> up(sigmoid(conv(conv_s2(maxpool(reduce(x)))))) * sigmoid(x[:, :1]) * x.
    The max-pool (esr_kernels.spec.POOL_KERNEL) has no padding, so H, W >= ``min_size`` (7).
    """

    min_size = POOL_KERNEL  # the input must hold one pooling window

    def __init__(self, channels: int, attn_channels: int = 16):
        super().__init__()
        self.reduce = conv1x1(channels, attn_channels)
        self.down = conv3x3(attn_channels, attn_channels, stride=2, padding=1)
        self.expand = conv3x3(attn_channels, channels)

    def attention_map(self, x: torch.Tensor) -> torch.Tensor:
        """Low-resolution sigmoid map (N, C, h, w) before the bilinear upsample."""
        low = R.pool(self.reduce(x))
        return torch.sigmoid(self.expand(self.down(low)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return R.gate(x, self.attention_map(x))


class InputTooSmallError(EsrError, ValueError):
    """The input is smaller than a model's attention pooling window allows."""


class InputError(EsrError, ValueError):
    """The input is not what the models take: (N, C, H, W) float in [0, 1] on the weights'
    device and in their dtype."""


def check_input(x: torch.Tensor, min_size: int, model_name: str, weight: torch.Tensor) -> None:
    """The models' input contract, checked the same way by reference and fused models:
    a 4-D (N, C, H, W) tensor with C = the head conv's input channels, a floating dtype equal
    to the weights', on the weights' device, at least ``min_size`` pixels each way. Raises a
    clear error instead of a kernel's or oneDNN's message (or, for uint8, silent garbage)."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{model_name} takes a torch.Tensor, got {type(x).__name__}")
    channels = weight.shape[1]
    if x.dim() != 4 or x.shape[1] != channels:
        raise InputError(f"{model_name} expects (N, {channels}, H, W) RGB input, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise InputError(f"{model_name} expects floating-point input with values in [0, 1], got {x.dtype}"
                         + (" (convert with x.float() / 255)" if x.dtype == torch.uint8 else ""))
    if x.dtype != weight.dtype:
        raise InputError(f"{model_name}: input is {x.dtype} but the weights are {weight.dtype}; convert "
                         f"the input (x.to({weight.dtype})) or the model (model.to({x.dtype}))")
    if x.device != weight.device:
        raise InputError(f"{model_name}: input is on {x.device} but the weights are on {weight.device}")
    h, w = x.shape[-2:]
    if h < min_size or w < min_size:
        why = f" (its attention pooling uses a {POOL_KERNEL}x{POOL_KERNEL} window)" if min_size > 1 else ""
        raise InputTooSmallError(f"{model_name} needs inputs of at least {min_size}x{min_size} pixels{why}; "
                                 f"got {h}x{w}")
    if _can_inspect_values(x) and x.numel():
        _check_values(x.detach(), model_name)


# Inputs are [0, 1]; a little overshoot (a sharpened or resampled image) is fine, 0-255 is not.
MAX_INPUT_VALUE = 2.0


def _check_values(x: torch.Tensor, model_name: str) -> None:
    """Every value finite and at most MAX_INPUT_VALUE, in one pass over x: 0-255 pixels give
    garbage (~1e7) and one NaN or infinity makes the whole output NaN, so both are refused.
    Under torch.compile the check is part of the graph (``torch._assert_async``: no graph
    break, so fullgraph=True still traces; inductor compiles it to a C++ check that raises a
    RuntimeError with the same message); a Python-side check would be skipped or break the graph."""
    if torch.compiler.is_compiling():
        # NaN compares False: refused with +-inf and values above the limit.
        ok = ((x <= MAX_INPUT_VALUE) & (x > float("-inf"))).all()
        torch._assert_async(ok, f"{model_name} takes finite values in [0, 1]; this input holds NaN, an "
                            f"infinity or values above {MAX_INPUT_VALUE:g} (0-255 pixels? divide by 255)")
        return
    lo, hi = (float(v) for v in torch.aminmax(x))  # NaN propagates to both
    if not (math.isfinite(lo) and math.isfinite(hi)):
        bad = "NaN" if math.isnan(lo) or math.isnan(hi) else "-inf" if lo == float("-inf") else "inf"
        raise InputError(f"{model_name} takes finite values in [0, 1]; this input holds {bad}")
    if hi > MAX_INPUT_VALUE:
        raise InputError(f"{model_name} takes values in [0, 1]; this input reaches {hi:g} "
                         "(0-255 pixels? divide by 255)")


def _can_inspect_values(x: torch.Tensor) -> bool:
    """The range check reads every value: on CPU tensors only (on a GPU it would synchronise
    every forward, and it cannot run inside a CUDA graph), and not while tracing or exporting a
    graph for another runtime (torch.jit.trace, ONNX, torch.export). Under torch.compile it runs
    (``_check_values``)."""
    if x.device.type != "cpu" or torch.compiler.is_exporting():
        return False
    return not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export()


class _ExactConstants:
    """Mixin for modules with constant per-channel buffers (a mean to subtract or add back)
    that are not in the state dict: each is derived from its exact Python value, and derived
    again after every ``_apply`` (``.to()``, ``.half()``, ``.bfloat16()``, ``.cuda()``). Why: a
    non-persistent buffer converted to bfloat16 and back would stay bf16-rounded, and
    ``load_state_dict`` cannot restore it (IFADNet's DIV2K mean: outputs 2.3e-3 off)."""

    def _register_constant(self, name: str, values, channels: int) -> None:
        """Buffer ``name`` (1, C, 1, 1): ``values`` (C numbers) in float32, zeros for None."""
        exact = None if values is None else tuple(float(v) for v in values)
        self.__dict__.setdefault("_exact_constants", {})[name] = (exact, channels)
        self.register_buffer(name, self.constant(name), persistent=False)

    def constant(self, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
        """Buffer ``name``'s exact value as a fresh model has it (float32, zeros for None),
        on ``like``'s device and in its dtype when given."""
        exact, channels = self._exact_constants[name]
        t = torch.zeros(channels) if exact is None else torch.tensor(exact, dtype=torch.float32)
        t = t.view(1, -1, 1, 1)
        return t if like is None else t.to(device=like.device, dtype=like.dtype)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        for name in getattr(self, "_exact_constants", {}):
            # The device and dtype fn gave, the value from the exact constant.
            setattr(self, name, self.constant(name, like=getattr(self, name)))
        return out


class AffineInputConv2d(_ExactConstants, nn.Conv2d):
    """Head conv of ``(x - in_shift) * in_scale`` (zero padding applies after the transform).
    IFADNet subtracts the DIV2K mean; RLFN scales [0, 1] to its [0, 255] training range; SPAN
    does both, in this order (as upstream computes it)."""

    def __init__(self, c_in: int, c_out: int, in_scale: float = 1.0, in_shift=None):
        super().__init__(c_in, c_out, 3, padding=1)
        self.in_scale = in_scale
        self._register_constant("in_shift", in_shift, c_in)
        self.has_shift = in_shift is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.has_shift:
            x = x - self.in_shift.to(x.dtype)
        if self.in_scale != 1.0:
            x = x * self.in_scale
        return super().forward(x)


class PixelShuffleTail(_ExactConstants, nn.Conv2d):
    """Final 3x3 conv to 3 r^2 channels, then pixel shuffle, writing the image:
    shuffle(conv(x) [+ image repeated r^2 times per channel]) / out_divisor [+ out_shift]."""

    def __init__(self, c_in: int, scale: int, image_channels: int = 3, repeat_image: bool = False,
                 out_divisor: float = 1.0, out_shift=None):
        super().__init__(c_in, image_channels * scale * scale, 3, padding=1)
        self.scale, self.repeat_image, self.out_divisor = scale, repeat_image, out_divisor
        self._register_constant("out_shift", out_shift, image_channels)
        self.has_shift = out_shift is not None

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.repeat_image:
            y = y + torch.repeat_interleave(image, self.scale * self.scale, dim=1)
        y = F.pixel_shuffle(y, self.scale)
        if self.out_divisor != 1.0:
            y = y / self.out_divisor
        if self.has_shift:
            y = y + self.out_shift.to(y.dtype)
        return y


class ConvAdd(nn.Conv2d):
    """3x3 conv plus a residual: conv(x) + residual."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 3, padding=1)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + residual


class ConcatConv(nn.Conv2d):
    """1x1 conv of the concatenated features (SPAN's feature fusion): conv(cat(features))."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(torch.cat(features, dim=1))


class ConcatFuse(nn.Conv2d):
    """IFADNet's feature fusion: GELU(1x1 conv of the concatenated block outputs) + residual."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(c_in, c_out, 1)

    def forward(self, features: list[torch.Tensor], residual: torch.Tensor) -> torch.Tensor:
        return gelu(super().forward(torch.cat(features, dim=1))) + residual
