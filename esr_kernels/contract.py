"""The contract every kernel backend implements, and the packed-weight types it trades in.

A fused module (``esr_models.fused.modules``) knows only this file: it asks its backend to pack
each op's weights once, at load (``pack_*``, returning a ``Pack``), and calls the backend's ops
with those packs in ``forward``. What a pack holds (layouts, padding, folded weights) is the
backend's business; the shapes a fused module sees are the model's own.

The ops (semantics: ``esr_kernels.reference``, one Python reference per op):
- ``conv``: dense KxK conv (K in {1, 3}) with its fused prologue (input shift, LocalAttention
  gate) and epilogue (bias, activation, partial-channel passthrough, residual, gated
  residual or SPAN's attention, shortcut + pixel shuffle);
- ``bsb``: IFADNet's blueprint shallow block, GELU(depthwise3x3_reflect(pointwise(x)) + b);
- ``esa``: enhanced spatial attention, x * sigmoid(expand(up(low(pool(down(reduce x)))) + skip x));
- ``la_reduce``: PFDNLite's LocalAttention reduction, max_pool 7/3 of a 1x1 conv;
- ``concat_conv``: a 1x1 conv of the concatenation of equal-width features (IFADNet's fusion);
- ``gate``: the LocalAttention gate alone, for backends that store it (``gate_in_conv`` False);
- ``conv_esa``: ``esa`` of a 1x1 conv's output (RLFN's block tail), which a backend may fold.
"""
from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from typing import Callable, ClassVar, Optional, Sequence

import torch
from torch import nn

from .op_args import ConvEpilogue, ConvGeometry, EsaWeights

Tensor = torch.Tensor


# ---------------------------------------------------------------- packed weights
class Pack:
    """Base of every packed-weight dataclass. Its tensor fields (also inside nested dataclasses,
    packs or not, and tuples) are what ``tensors`` lists and ``map_tensors`` rebuilds; the other
    fields (ints, a conv's epilogue) describe the op."""

    def tensors(self, prefix: str = "") -> dict[str, Tensor]:
        """{dotted field path: tensor} of every tensor the pack holds."""
        out: dict[str, Tensor] = {}
        _collect(self, prefix, out)
        return out

    def map_tensors(self, fn: Callable[[str, Tensor], Tensor], prefix: str = "") -> "Pack":
        """A copy of the pack with every tensor t at path p replaced by fn(p, t)."""
        return _rebuild(self, prefix, fn)


def _collect(value, path: str, out: dict) -> None:
    """``path``: the dotted path of ``value``, or of a dataclass's fields' prefix."""
    if isinstance(value, Tensor):
        out[path] = value
    elif dataclasses.is_dataclass(value):
        prefix = path if not path or path.endswith(".") else path + "."
        for f in dataclasses.fields(value):
            _collect(getattr(value, f.name), prefix + f.name, out)
    elif isinstance(value, tuple):
        for i, v in enumerate(value):
            _collect(v, f"{path}.{i}", out)


def _rebuild(value, path: str, fn):
    if isinstance(value, Tensor):
        return fn(path, value)
    if dataclasses.is_dataclass(value):
        prefix = path if not path or path.endswith(".") else path + "."
        return dataclasses.replace(value, **{f.name: _rebuild(getattr(value, f.name), prefix + f.name, fn)
                                             for f in dataclasses.fields(value)})
    if isinstance(value, tuple):
        return tuple(_rebuild(v, f"{path}.{i}", fn) for i, v in enumerate(value))
    return value


@dataclasses.dataclass(frozen=True)
class ConvPack(Pack, ConvGeometry):
    """A dense conv's packed weights: its geometry (``ConvGeometry``: the esr::conv arguments
    the pack fixes), ``c_in``, the input channels it reads (the first ``c_in`` of x), and the
    ``epilogue`` it was packed with."""
    c_in: int
    epilogue: ConvEpilogue


@dataclasses.dataclass(frozen=True)
class BsbPack(Pack):
    """A BSB's packed weights (``channels`` in and out)."""
    channels: int


@dataclasses.dataclass(frozen=True)
class EsaPack(Pack):
    """An ESA's packed weights (``channels`` in and out, ``c_reduce`` inside)."""
    channels: int
    c_reduce: int


@dataclasses.dataclass(frozen=True)
class ConvEsaPack(Pack):
    """A 1x1 conv of ``channels`` -> ``channels`` and the ESA after it (RLFN's block tail)."""
    channels: int


@dataclasses.dataclass(frozen=True)
class ConvThenEsa(ConvEsaPack):
    """The default ConvEsaPack: the two packs, run one after the other."""
    conv: ConvPack
    esa: EsaPack


@dataclasses.dataclass(frozen=True)
class LaReducePack(Pack):
    """A LocalAttention reduction's packed weights: ``c_in`` -> ``c_reduce`` channels."""
    c_in: int
    c_reduce: int


@dataclasses.dataclass(frozen=True)
class ConcatConvPack(Pack):
    """A 1x1 conv over ``chunks`` concatenated features of equal width, to ``c_out`` channels,
    with the ``epilogue`` it was packed with (activation, residual)."""
    c_out: int
    chunks: int
    epilogue: ConvEpilogue


# ---------------------------------------------------------------- the backend
class KernelBackend(ABC):
    """What a fused module may call. Packing runs once per module at load (and again when the
    weights change); the ops run every forward. Inputs and outputs are (N, C, H, W) tensors of
    one of ``dtypes`` on one of ``devices``, in any layout; outputs have the model's channel
    counts whatever the backend pads internally."""

    name: ClassVar[str]
    devices: ClassVar[tuple[str, ...]]
    dtypes: ClassVar[tuple[torch.dtype, ...]]
    #: Whether a PFDN block should leave the LocalAttention gate to ``conv`` (the ``gate_input``
    #: prologue of its first conv, the RES_GATED_INPUT residual of its last), which recomputes it
    #: and never stores it: the GPU kernels do, where recomputing is cheaper than a round trip
    #: through memory. False: the block stores ``gate(x, att)`` once and passes it as the first
    #: conv's input and the last one's plain residual (the CPU backend: its gate prologue
    #: stores the gated tensor anyway, and reading it back costs less than recomputing it).
    #: Read when a block is packed (Triton's answer follows the conv kernel chosen then: its
    #: v2 conv cannot gate on load); the packs then say which way the block runs.
    gate_in_conv: bool = True

    def __deepcopy__(self, memo):
        # Stateless (packs live in the modules) and holds torch.ops handles, which cannot be
        # copied: a deep copy of a fused model shares its backend.
        return self

    def supports_conv(self, conv: nn.Conv2d) -> bool:
        """Whether a plain conv (K in {1, 3}, groups 1, zero padding K // 2, bias: checked by
        the caller) is within this backend's limits."""
        return True

    # ---- packing (once, at load)
    @abstractmethod
    def pack_conv(self, weight: Tensor, bias: Optional[Tensor], epilogue: ConvEpilogue = ConvEpilogue(), *,
                  c_out: Optional[int] = None, stride: int = 1, padding: Optional[int] = None,
                  weight_scale: float = 1.0) -> ConvPack:
        """weight (C_conv, C_in, K, K), bias (C_conv,) or None; ``epilogue``: what every call of
        the pack fuses (the pack carries it). ``c_out``: the op's total output channels when
        larger than C_conv (partial convs pass the rest through). ``weight_scale`` multiplies
        weight and bias (folded in float64)."""

    @abstractmethod
    def pack_bsb(self, pointwise: Tensor, depthwise: Tensor, bias: Tensor) -> BsbPack:
        """pointwise (C, C, 1, 1) without bias; depthwise (C, 1, 3, 3); bias (C,)."""

    @abstractmethod
    def pack_esa(self, weights: EsaWeights) -> EsaPack:
        ...

    @abstractmethod
    def pack_la_reduce(self, weight: Tensor, bias: Tensor) -> LaReducePack:
        """The reduction's 1x1 conv: weight (C_r, C, 1, 1), bias (C_r,)."""

    @abstractmethod
    def pack_concat_conv(self, weight: Tensor, bias: Tensor, chunks: int,
                         epilogue: ConvEpilogue = ConvEpilogue()) -> ConcatConvPack:
        """weight (C_out, chunks * C, 1, 1), bias (C_out,); ``epilogue``: its activation and
        residual mode."""

    # ---- ops
    @abstractmethod
    def conv(self, x: Tensor, pack: ConvPack, *, residual: Optional[Tensor] = None, att: Optional[Tensor] = None,
             shift: Optional[Tensor] = None, shortcut: Optional[Tensor] = None) -> Tensor:
        """``esr_kernels.reference.conv`` with the pack's geometry and epilogue; the keywords are
        the epilogue's tensors (``ConvEpilogue``), those of this call."""

    @abstractmethod
    def bsb(self, x: Tensor, pack: BsbPack, residual: Optional[Tensor] = None) -> Tensor:
        """``esr_kernels.reference.bsb``; H, W >= 2."""

    @abstractmethod
    def esa(self, x: Tensor, pack: EsaPack, residual: Optional[Tensor] = None) -> Tensor:
        """``esr_kernels.reference.esa``; H, W >= 15."""

    def pack_conv_esa(self, weight: Tensor, bias: Tensor, esa: EsaWeights) -> ConvEsaPack:
        """A 1x1 conv, weight (C, C, 1, 1) and bias (C,), followed by an ESA of C channels. By
        default its two packs; a backend may fold the conv into the ESA's own passes."""
        return ConvThenEsa(channels=weight.shape[0], conv=self.pack_conv(weight, bias), esa=self.pack_esa(esa))

    def conv_esa(self, x: Tensor, pack: ConvEsaPack, residual: Optional[Tensor] = None) -> Tensor:
        """``esa(conv(x))`` (``esr_kernels.reference.esa`` of a 1x1 ``reference.conv``) [+ residual]."""
        assert isinstance(pack, ConvThenEsa), "a backend that packs ConvEsaPack its own way runs it its own way"
        return self.esa(self.conv(x, pack.conv), pack.esa, residual)

    def gate(self, x: Tensor, att: Tensor) -> Tensor:
        """``esr_kernels.reference.gate``: x (N, C, H, W), att (N, C, h, w) -> (N, C, H, W)."""
        from .reference import gate
        return gate(x.float(), att.float()).to(x.dtype)

    @abstractmethod
    def la_reduce(self, x: Tensor, pack: LaReducePack) -> Tensor:
        """``esr_kernels.reference.la_reduce``: (N, C, H, W), H, W >= 7 -> (N, C_r, Hp, Wp)."""

    @abstractmethod
    def concat_conv(self, features: Sequence[Tensor], pack: ConcatConvPack,
                    residual: Optional[Tensor] = None) -> Tensor:
        """act(1x1 conv of cat(features)) [+ residual], act and residual mode from the pack's
        epilogue (``esr_kernels.reference.concat_conv``)."""
