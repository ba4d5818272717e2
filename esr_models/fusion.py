"""The fused inference path: ``fuse_(model)`` swaps a reference model's modules for fused ones
in place, and ``load_fused`` loads a model by name and fuses it for a backend.

Each fused module *adopts* the reference module it replaces (same parameters, same state-dict
keys) and packs its weights once, here, into non-persistent buffers in the kernels' layouts;
``forward`` then only launches ``esr::`` ops. Swapping is one generic walk over a table of
reference type -> fused type (no per-architecture patching).
"""
from __future__ import annotations

import os
import sys
import warnings

import torch
from torch import nn

from .ifadnet import BFEB, RFMB
from .layers import AffineInputConv2d, ConcatFuse, ConvAdd, PixelShuffleTail
from .pfdnlite import PartialBlock
from .rlfn import RLFB

BACKENDS = ("auto", "triton", "cuda", "cpu")


def _ops():
    import esr_kernels.ops  # noqa: F401  (registers torch.ops.esr.*; imports triton)

    return torch.ops.esr


def _spec():
    from esr_kernels import spec

    return spec


def _adopt(cls, ref: nn.Module) -> nn.Module:
    """A ``cls`` instance sharing ``ref``'s parameters and submodules (so the state dict is
    unchanged), with fresh containers so that adding buffers does not touch ``ref``."""
    obj = cls.__new__(cls)
    state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in ref.__dict__.items()}
    state["_non_persistent_buffers_set"] = set(ref._non_persistent_buffers_set)
    obj.__dict__.update(state)
    return obj


def _pack_conv(conv: nn.Conv2d, op_channels: int | None = None, weight_scale: float = 1.0):
    """(packed weight in the module's dtype, float32 bias padded to the packed width)."""
    from esr_kernels.packing import pack_bias
    from esr_kernels.reference import pack_conv_weight

    w = conv.weight.detach()
    packed = pack_conv_weight(w.double() * weight_scale if weight_scale != 1.0 else w, op_channels)
    b = conv.bias.detach().double() * weight_scale if conv.bias is not None else None
    return packed.to(w.dtype), pack_bias(b, packed.shape[-1], w.device)


def _conv(x, w, b, c_conv, *, c_out=None, ksize=3, stride=1, padding=None, act=0, residual=None,
          residual_mode=0, att=None, gate_input=False, shift=None, shortcut=None, shortcut_mode=0,
          shuffle=0):
    padding = ksize // 2 if padding is None else padding
    return _ops().conv(x, w, b, c_conv, c_out or c_conv, ksize, stride, padding, act, residual,
                       residual_mode, att, gate_input, shift, shortcut, shortcut_mode, shuffle)


class FusedConv2d(nn.Conv2d):
    """Plain KxK conv (K in {1, 3}, groups 1, zero padding K // 2) through esr::conv."""

    @staticmethod
    def can_fuse(ref: nn.Conv2d) -> bool:
        k = ref.kernel_size
        return (k[0] == k[1] and k[0] in (1, 3) and ref.groups == 1 and ref.dilation == (1, 1)
                and ref.padding_mode == "zeros" and ref.padding == (k[0] // 2, k[0] // 2)
                and ref.stride[0] == ref.stride[1] and ref.bias is not None
                and ref.out_channels <= 64)

    @classmethod
    def from_reference(cls, ref: nn.Conv2d):
        obj = _adopt(cls, ref)
        w, b = _pack_conv(ref)
        obj.register_buffer("w_packed", w, persistent=False)
        obj.register_buffer("b_packed", b, persistent=False)
        return obj

    def forward(self, x):
        return _conv(x, self.w_packed, self.b_packed, self.out_channels, ksize=self.kernel_size[0],
                     stride=self.stride[0], padding=self.padding[0])


class FusedAffineInputConv2d(AffineInputConv2d):
    """Head conv; the input scale is folded into the weights, the shift is the prologue."""

    @classmethod
    def from_reference(cls, ref: AffineInputConv2d):
        obj = _adopt(cls, ref)
        w, b = _pack_conv(ref)
        if ref.in_scale != 1.0:  # conv(s x) = (s W) x: fold into the weight only
            w = (w.double() * ref.in_scale).to(w.dtype)
        obj.register_buffer("w_packed", w, persistent=False)
        obj.register_buffer("b_packed", b, persistent=False)
        obj.register_buffer("shift_flat", ref.in_shift.detach().flatten().float() * ref.in_scale
                            if ref.has_shift else None, persistent=False)
        return obj

    def forward(self, x):
        return _conv(x, self.w_packed, self.b_packed, self.out_channels, shift=self.shift_flat)


class FusedPixelShuffleTail(PixelShuffleTail):
    """Tail conv writing the final image: shortcut and pixel shuffle in the epilogue; the
    output divisor is folded into weight and bias."""

    @classmethod
    def from_reference(cls, ref: PixelShuffleTail):
        obj = _adopt(cls, ref)
        w, b = _pack_conv(ref, weight_scale=1.0 / ref.out_divisor)
        obj.register_buffer("w_packed", w, persistent=False)
        obj.register_buffer("b_packed", b, persistent=False)
        obj.register_buffer("shift_flat", ref.out_shift.detach().flatten().float() if ref.has_shift else None,
                            persistent=False)
        return obj

    def forward(self, x, image):
        s = _spec()
        if self.repeat_image:
            sc, mode = image, s.SHORTCUT_REPEAT_INPUT
        elif self.has_shift:
            sc, mode = self.shift_flat, s.SHORTCUT_VECTOR
        else:
            sc, mode = None, s.SHORTCUT_NONE
        return _conv(x, self.w_packed, self.b_packed, self.out_channels, shortcut=sc,
                     shortcut_mode=mode, shuffle=self.scale)


class FusedConvAdd(ConvAdd):
    from_reference = classmethod(FusedConv2d.from_reference.__func__)

    def forward(self, x, residual):
        return _conv(x, self.w_packed, self.b_packed, self.out_channels, residual=residual,
                     residual_mode=_spec().RES_TENSOR)


class FusedConcatFuse(ConcatFuse):
    from_reference = classmethod(FusedConv2d.from_reference.__func__)

    def forward(self, features, residual):
        s = _spec()
        return _conv(torch.cat(features, dim=1), self.w_packed, self.b_packed, self.out_channels,
                     ksize=1, act=s.ACT_GELU, residual=residual, residual_mode=s.RES_TENSOR)


def _register_convs(obj: nn.Module, convs, prefix: str, **kw) -> None:
    for i, conv in enumerate(convs):
        w, b = _pack_conv(conv, **kw)
        obj.register_buffer(f"{prefix}{i}_w", w, persistent=False)
        obj.register_buffer(f"{prefix}{i}_b", b, persistent=False)


def _register_esa(obj: nn.Module, esa) -> None:
    from esr_kernels.packing import pack_esa

    for name, t in pack_esa(esa.reduce, esa.down, esa.low, esa.skip, esa.expand,
                            esa.reduce.weight.dtype).items():
        obj.register_buffer(f"esa_{name}", t, persistent=False)


def _esa(obj, x, residual=None):
    names = ("reduce_w", "reduce_b", "down_w", "down_b", "low_w", "low_b", "skip_w", "skip_b",
             "expand_w", "expand_b")
    return _ops().esa(x, *(getattr(obj, f"esa_{n}") for n in names), residual)


class FusedBFEB(BFEB):
    """Three esr::bsb launches; the last adds the block residual."""

    @classmethod
    def from_reference(cls, ref: BFEB):
        from esr_kernels.reference import next_pow2_16
        from esr_kernels.triton.bsb import pack_depthwise

        obj = _adopt(cls, ref)
        for i, bc in enumerate(ref.convs):
            w, _ = _pack_conv(bc.pointwise)
            dw, b = _pack_conv(bc.depthwise)  # bias padded; the weight is repacked below
            obj.register_buffer(f"pw{i}", w, persistent=False)
            obj.register_buffer(f"dw{i}", pack_depthwise(bc.depthwise.weight.detach(),
                                                         next_pow2_16(bc.depthwise.out_channels)), persistent=False)
            obj.register_buffer(f"db{i}", b, persistent=False)
        return obj

    def forward(self, x):
        ops = _ops()
        out = x
        for i in range(3):
            out = ops.bsb(out, getattr(self, f"pw{i}"), getattr(self, f"dw{i}"), getattr(self, f"db{i}"),
                          x if i == 2 else None)
        return out


class FusedRFMB(RFMB):
    """Three 3x3 conv+GELU launches, then ESA with the block residual in its last pass."""

    @classmethod
    def from_reference(cls, ref: RFMB):
        obj = _adopt(cls, ref)
        _register_convs(obj, ref.convs, "c")
        _register_esa(obj, ref.esa)
        return obj

    def forward(self, x):
        act = _spec().ACT_GELU
        out = x
        for i, conv in enumerate(self.convs):
            out = _conv(out, getattr(self, f"c{i}_w"), getattr(self, f"c{i}_b"), conv.out_channels, act=act)
        return _esa(self, out, residual=x)


class FusedRLFB(RLFB):
    """Three 3x3 conv+LeakyReLU launches (the last adds the block input), the 1x1, then ESA."""

    @classmethod
    def from_reference(cls, ref: RLFB):
        obj = _adopt(cls, ref)
        _register_convs(obj, list(ref.convs) + [ref.mix], "c")
        _register_esa(obj, ref.esa)
        return obj

    def forward(self, x):
        s = _spec()
        out = x
        for i, conv in enumerate(self.convs):
            last = i == len(self.convs) - 1
            out = _conv(out, getattr(self, f"c{i}_w"), getattr(self, f"c{i}_b"), conv.out_channels,
                        act=s.ACT_LEAKY, residual=x if last else None,
                        residual_mode=s.RES_TENSOR if last else s.RES_NONE)
        n = len(self.convs)
        out = _conv(out, getattr(self, f"c{n}_w"), getattr(self, f"c{n}_b"), self.mix.out_channels, ksize=1)
        return _esa(self, out)


class FusedPartialBlock(PartialBlock):
    """PFDN block. The attention map is computed at low resolution (la_reduce, then two small
    convs); the gated tensor is never written: the first conv gates its input on load (and
    passes gated channels through in the pruned form), the last recomputes it as residual."""

    @classmethod
    def from_reference(cls, ref: PartialBlock):
        obj = _adopt(cls, ref)
        from esr_kernels.packing import pack_bias
        from esr_kernels.reference import pack_conv_weight

        a = ref.attn
        obj.register_buffer("la_w", pack_conv_weight(a.reduce.weight.detach()), persistent=False)
        obj.register_buffer("la_b", a.reduce.bias.detach().float().clone(), persistent=False)
        _register_convs(obj, [a.down, a.expand], "a")
        channels = ref.conv3.out_channels
        _register_convs(obj, [ref.conv1], "c", op_channels=channels)
        if ref.full:
            _register_convs(obj, [ref.conv2], "p", op_channels=channels)
        _register_convs(obj, [ref.conv3], "o")
        return obj

    def forward(self, x):
        s, ops = _spec(), _ops()
        c = x.shape[1]
        low = ops.la_reduce(x, self.la_w, self.la_b)
        low = _conv(low, self.a0_w, self.a0_b, self.attn.down.out_channels, stride=2)
        att = _conv(low, self.a1_w, self.a1_b, self.attn.expand.out_channels, act=s.ACT_SIGMOID)
        if self.full:
            t = _conv(x, self.c0_w, self.c0_b, self.conv1.out_channels, act=s.ACT_SILU, att=att, gate_input=True)
            t = _conv(t, self.p0_w, self.p0_b, self.split, c_out=c, act=s.ACT_SILU)
        else:
            t = _conv(x, self.c0_w, self.c0_b, self.split, c_out=c, act=s.ACT_SILU, att=att, gate_input=True)
        return _conv(t, self.o0_w, self.o0_b, self.conv3.out_channels, act=s.ACT_SILU, residual=x,
                     residual_mode=s.RES_GATED_INPUT, att=att)


FUSED_TYPES: dict[type, type] = {
    BFEB: FusedBFEB, RFMB: FusedRFMB, RLFB: FusedRLFB, PartialBlock: FusedPartialBlock,
    AffineInputConv2d: FusedAffineInputConv2d, PixelShuffleTail: FusedPixelShuffleTail,
    ConvAdd: FusedConvAdd, ConcatFuse: FusedConcatFuse, nn.Conv2d: FusedConv2d,
}


def fuse_(model: nn.Module) -> dict[str, nn.Module]:
    """Swap, in place, every module of a type in FUSED_TYPES (exact type, outermost first, and
    for plain convs only those the kernel supports) for its fused counterpart. Idempotent.
    Returns {qualified name: replaced reference module}."""
    replaced: dict[str, nn.Module] = {}
    fused_types = set(FUSED_TYPES.values())

    def walk(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            qual = f"{prefix}{name}"
            if type(child) in fused_types:
                continue  # already fused: its submodules only hold the adopted parameters
            fused_cls = FUSED_TYPES.get(type(child))
            if fused_cls is not None and getattr(fused_cls, "can_fuse", lambda m: True)(child):
                setattr(parent, name, fused_cls.from_reference(child))
                replaced[qual] = child
            else:
                walk(child, qual + ".")

    walk(model, "")
    return replaced


def _prepare_triton(device: torch.device) -> None:
    import importlib.util

    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("backend 'triton' needs triton: pip install -e '.[triton]'")
    if device.type == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("Triton kernels run on CPU tensors only under TRITON_INTERPRET=1, "
                               "which must be set before triton is first imported")
        os.environ["TRITON_INTERPRET"] = "1"  # asked for explicitly: slow, but runs


def backend_unavailable_reason(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run fused kernels on ``device`` (None if it can). 'auto' counts as
    unavailable when it would fall back to the reference: a benchmark must not call that fused."""
    try:
        chosen = resolve_backend(backend, device)
    except (RuntimeError, ValueError) as exc:
        return str(exc)
    if chosen == "reference":
        return f"no fused kernels for {device.type} in this build"
    if chosen == "triton" and device.type == "cpu":
        return "Triton on CPU is the interpreter: correctness only, not timed"
    return None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend that will run: 'triton' or 'reference' (no fused kernels for this device)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend in ("cuda", "cpu"):
        raise RuntimeError(f"backend {backend!r} needs the native esr_kernels extension, which this "
                           "build does not have (see `esr backends`)")
    if backend == "auto":
        import importlib.util

        if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            return "triton"
        return "reference"
    return backend


def load_fused(name_or_path, device="cpu", dtype=torch.float32, backend: str = "auto") -> nn.Module:
    """Load a model and swap in the fused kernels for ``backend``. ``model.backend`` says what
    runs: 'triton', or 'reference' when 'auto' finds no fused kernels for the device (CPU in
    this build); then a warning says so and the unfused reference runs."""
    from .loading import load

    device = torch.device(device)
    chosen = resolve_backend(backend, device)
    model = load(name_or_path, device=device, dtype=dtype)
    if chosen == "reference":
        warnings.warn(f"fused=True: no fused kernels for device '{device.type}' in this build "
                      "(Triton needs CUDA, or backend='triton' to use its slow CPU interpreter); "
                      "running the PyTorch reference", stacklevel=2)
    else:
        _prepare_triton(device)
        fuse_(model)
    model.backend = chosen
    return model
