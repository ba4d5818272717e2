"""The public ops ``esr::conv``, ``esr::concat_conv``, ``esr::bsb``, ``esr::esa``, ``esr::la_reduce``,
``esr::gate``.

With compiled Triton (a GPU) each is a ``triton_op`` whose kernels are launched through
``wrap_triton``, so torch.compile(fullgraph=True) traces into them and CUDA graphs capture
them. Under Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) kernels are plain Python
that tracing cannot see into, so the same functions are registered as opaque ``custom_op``s
with a ``register_fake`` (the shared ``_alloc_*`` functions give shapes and layouts).

Importing this module imports triton. Weights are passed packed (``esr_kernels.packing``):
packing happens once, at model load. ``esr::conv`` and ``esr::esa`` take their arguments in the
order of ``esr_kernels.op_args.CONV`` / ``ESA`` (their schemas are generated from those field
lists); their functions read them grouped (``split``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.library import triton_op, wrap_triton

from .op_args import CONV, ESA, ConvEpilogue, ConvGeometry, OpSignature
from .spec import pooled_size
from .triton.bsb import bsb_launch
from .triton.concat_conv import concat_conv_launch, same_layout
from .triton.common import interpreting
from .triton.configs import aux_version, conv_choice
from .triton.conv_tc import padded_channels_last
from .triton.conv import conv_launch, conv_out_shape
from .triton.esa import esa_launch, esa_shapes
from .triton.esa_tc import esa_tc_launch
from .triton.gate import _gate_kernel, gate_launch
from .triton.la_reduce import la_reduce_launch

Tensor = torch.Tensor


def _define(name: str, alloc, signature: Optional[OpSignature] = None):
    """Register ``fn`` as esr::<name>: a triton_op, or under the interpreter a custom_op whose
    fake implementation is ``alloc`` (same signature, returns the empty output). ``signature``:
    the op's arguments (``fn`` takes them positionally), else ``fn``'s own."""
    def decorate(fn):
        if signature is not None:
            fn.__signature__ = signature.signature()  # what the schema is inferred from
        if interpreting():
            op = torch.library.custom_op(f"esr::{name}", mutates_args=())(fn)
            op.register_fake(alloc)
            return op
        return triton_op(f"esr::{name}", mutates_args=())(fn)
    return decorate


def _channels_innermost(x: Tensor) -> bool:
    """x is laid out channels-last: channels innermost (stride 1), pixels padded or not."""
    return x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1 and not x.is_contiguous()


def _like(x: Tensor, shape) -> Tensor:
    """An output in x's layout (channels_last in, channels_last out; padded pixels when the
    v2 conv is chosen, ``conv_tc.padded_channels_last``)."""
    if _channels_innermost(x):
        if conv_choice() == "v2":
            return padded_channels_last(shape, x)
        return torch.empty(shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return torch.empty(shape, dtype=x.dtype, device=x.device)


# ---------------------------------------------------------------- conv
def _conv_output(x: Tensor, geometry: ConvGeometry, epilogue: ConvEpilogue) -> Tensor:
    """The conv's output: the final image (NCHW) with a pixel shuffle; else x's layout, or
    padded channels-last whenever the v2 conv is chosen (v2 reads channels innermost: from the
    head conv on, a model's activations then stay in that layout whatever the input's)."""
    shape = conv_out_shape(x.shape, geometry, epilogue.shuffle)
    if epilogue.shuffle:
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    if conv_choice() == "v2":
        return padded_channels_last(shape, x)
    return _like(x, shape)


def _alloc_conv(*args) -> Tensor:
    x, _, _, geometry, epilogue = CONV.split(args)
    return _conv_output(x, geometry, epilogue)


@_define("conv", _alloc_conv, CONV)
def conv(*args) -> Tensor:
    """Fused dense conv; semantics in ``esr_kernels.reference.conv``. x (N, C, H, W) in any
    layout; output (N, c_out, H', W') in x's layout, or (N, c_out / r^2, r H', r W') NCHW when
    ``shuffle`` = r > 0."""
    x, w_packed, bias, geometry, epilogue = CONV.split(args)
    return conv_launch(wrap_triton, x, w_packed, bias, geometry, epilogue,
                       _conv_output(x, geometry, epilogue))


# ---------------------------------------------------------------- concat_conv
def _alloc_concat_conv(features: list[Tensor], w_packed: Tensor, bias: Tensor, c_out: int, act: int,
                       residual_mode: int, residual: Optional[Tensor]) -> Tensor:
    f0 = features[0]
    return _conv_output(f0, ConvGeometry(c_conv=c_out, c_out=c_out, ksize=1, stride=1, padding=0),
                        ConvEpilogue())


@_define("concat_conv", _alloc_concat_conv)
def concat_conv(features: list[Tensor], w_packed: Tensor, bias: Tensor, c_out: int, act: int,
                residual_mode: int, residual: Optional[Tensor]) -> Tensor:
    """act(1x1 conv of cat(features)) [+ residual, RES_TENSOR or RES_SPAN_ATT], without making
    the concatenation; semantics in ``esr_kernels.reference.concat_conv``. features: 1 to 6
    tensors (N, C_f, H, W) of one shape and dtype, any layout (copied to the first's where it
    differs); w_packed (1, k C_f, CO_pad); output (N, c_out, H, W) in the first feature's layout
    (as esr::conv's)."""
    out = _alloc_concat_conv(features, w_packed, bias, c_out, act, residual_mode, residual)
    return concat_conv_launch(wrap_triton, same_layout(features), w_packed, bias, act, residual_mode, residual, out)


# ---------------------------------------------------------------- bsb
def _alloc_bsb(x: Tensor, pw_packed: Tensor, dw_packed: Tensor, dw_bias: Tensor,
               residual: Optional[Tensor]) -> Tensor:
    return _like(x, x.shape)


@_define("bsb", _alloc_bsb)
def bsb(x: Tensor, pw_packed: Tensor, dw_packed: Tensor, dw_bias: Tensor,
        residual: Optional[Tensor]) -> Tensor:
    """GELU(depthwise3x3_reflect(pointwise1x1(x)) + bias) [+ residual]; x (N, C, H, W), H, W >= 2."""
    out = _alloc_bsb(x, pw_packed, dw_packed, dw_bias, residual)
    return bsb_launch(wrap_triton, x, pw_packed, dw_packed, dw_bias, residual, out)


# ---------------------------------------------------------------- esa
def _alloc_esa(*args) -> Tensor:
    return _like(args[0], args[0].shape)


@_define("esa", _alloc_esa, ESA)
def esa(*args) -> Tensor:
    """ESA [+ residual] on x (N, C, H, W), H, W >= 15, its weights (``EsaWeights``) packed by
    ``packing.pack_esa``: ``skip_w``/``skip_b`` are the 1x1 branch folded with the reduction
    (skip(reduce(x)) as one 1x1 conv). v1's kernels (triton/esa.py) or, where
    ``configs.aux_version`` says (the v2 conv chosen), v2's (triton/esa_tc.py)."""
    x, weights, residual = ESA.split(args)
    out = _like(x, x.shape)
    if aux_version(x, weights.reduce_w.dtype) == "v2":
        return esa_tc_launch(wrap_triton, x, weights, residual, out)
    n, _, h, w = x.shape
    (h2, w2), (hp, wp) = esa_shapes(h, w)
    cr = weights.reduce_w.shape[-1]
    d = torch.empty((n, cr, h2, w2), dtype=torch.float32, device=x.device)
    low = torch.empty((n, cr, hp, wp), dtype=torch.float32, device=x.device)
    return esa_launch(wrap_triton, x, weights, residual, out, d, low)


# ---------------------------------------------------------------- la_reduce
def _alloc_la_reduce(x: Tensor, reduce_w: Tensor, reduce_b: Tensor) -> Tensor:
    n, _, h, w = x.shape
    return torch.empty((n, reduce_b.shape[0], pooled_size(h), pooled_size(w)), dtype=x.dtype, device=x.device)


@_define("la_reduce", _alloc_la_reduce)
def la_reduce(x: Tensor, reduce_w: Tensor, reduce_b: Tensor) -> Tensor:
    """max_pool 7/3 (no padding) of a 1x1 conv; x (N, C, H, W), H, W >= 7 -> (N, C_r, Hp, Wp)."""
    out = _alloc_la_reduce(x, reduce_w, reduce_b)
    return la_reduce_launch(wrap_triton, x, reduce_w, reduce_b, reduce_b.shape[0], out)


# ---------------------------------------------------------------- gate
def _alloc_gate(x: Tensor, att: Tensor) -> Tensor:
    return _like(x, x.shape)


@_define("gate", _alloc_gate)
def gate(x: Tensor, att: Tensor) -> Tensor:
    """LocalAttention's gate x * up(att) * sigmoid(x[:, :1]) (``reference.gate``); x (N, C, H, W),
    att (N, C, h, w); output in x's layout (as esr::conv's)."""
    return gate_launch(wrap_triton(_gate_kernel), x, att, _alloc_gate(x, att))
