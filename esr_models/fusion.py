"""The fused inference path: ``fuse_(model, backend)`` swaps a reference model's modules for
fused ones in place, and ``load_fused`` loads a model by name and fuses it.

A fused module *adopts* the reference module it replaces (same parameters, same state-dict
keys), asks its kernel backend to pack the weights once, here, into non-persistent buffers,
and in ``forward`` only calls the backend's four ops (conv, bsb, esa, la_reduce). Swapping is
one generic walk over a table of reference type -> fused type, not per-architecture patching.

Backends (``esr_kernels``): "triton" (TritonBackend: torch.ops.esr.*, Triton kernels; on CPU
tensors only under the interpreter) and "cpu" (CpuBackend: the C++ kernels of the native
extension, with oneDNN for the convolutions its conv engine does not cover).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import warnings

import torch
from torch import nn

from .ifadnet import BFEB, RFMB
from .layers import AffineInputConv2d, ConcatFuse, ConvAdd, InputError, PixelShuffleTail
from .pfdnlite import PartialBlock
from .rlfn import RLFB

BACKENDS = ("auto", "triton", "cuda", "cpu")


def _spec():
    from esr_kernels import spec

    return spec


def _adopt(cls, ref: nn.Module, kernels) -> nn.Module:
    """A ``cls`` instance sharing ``ref``'s parameters and submodules (so the state dict is
    unchanged), with fresh containers so that adding buffers does not touch ``ref``."""
    obj = cls.__new__(cls)
    state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in ref.__dict__.items()}
    state["_non_persistent_buffers_set"] = set(ref._non_persistent_buffers_set)
    obj.__dict__.update(state)
    obj.kernels = kernels
    obj._packs = {}
    return obj


def _store(module: nn.Module, prefix: str, packed: dict) -> None:
    """Register a backend's packed tensors as non-persistent buffers (they follow .to())."""
    module._packs[prefix] = list(packed)
    for key, t in packed.items():
        module.register_buffer(f"{prefix}_{key}", t, persistent=False)


def _packed(module: nn.Module, prefix: str) -> dict:
    return {key: getattr(module, f"{prefix}_{key}") for key in module._packs[prefix]}


class _Fused:
    """A fused module: adopts a reference module and packs its weights for the backend.
    ``_pack`` reads the module's own parameters, so it can run again when they change."""

    @classmethod
    def from_reference(cls, ref: nn.Module, kernels):
        obj = _adopt(cls, ref, kernels)
        obj._pack()
        return obj

    def _pack(self) -> None:
        raise NotImplementedError


class FusedConv2d(_Fused, nn.Conv2d):
    """Plain KxK conv (K in {1, 3}, groups 1, zero padding K // 2, bias) through the backend."""

    @staticmethod
    def can_fuse(ref: nn.Conv2d) -> bool:
        k = ref.kernel_size
        return (k[0] == k[1] and k[0] in (1, 3) and ref.groups == 1 and ref.dilation == (1, 1)
                and ref.padding_mode == "zeros" and ref.padding == (k[0] // 2, k[0] // 2)
                and ref.stride[0] == ref.stride[1] and ref.bias is not None
                and ref.out_channels <= 64)

    def _pack(self) -> None:
        kernels = self.kernels
        _store(self, "conv", kernels.pack_conv(self.weight, self.bias))

    def forward(self, x):
        return self.kernels.conv(x, _packed(self, "conv"), self.out_channels, ksize=self.kernel_size[0],
                                 stride=self.stride[0])


class FusedAffineInputConv2d(_Fused, AffineInputConv2d):
    """Head conv: the input scale is folded into the weight, the shift is the prologue."""

    def _pack(self) -> None:
        kernels = self.kernels
        packed = kernels.pack_conv(self.weight * self.in_scale, self.bias)  # conv(s x) = (s W) x
        _store(self, "conv", packed)
        shift = self.in_shift.detach().flatten().float() * self.in_scale if self.has_shift else None
        self.register_buffer("shift_flat", shift, persistent=False)

    def forward(self, x):
        return self.kernels.conv(x, _packed(self, "conv"), self.out_channels, shift=self.shift_flat)


class FusedPixelShuffleTail(_Fused, PixelShuffleTail):
    """Tail conv writing the final image: shortcut and pixel shuffle in the epilogue; the
    output divisor is folded into weight and bias."""

    def _pack(self) -> None:
        kernels = self.kernels
        _store(self, "conv", kernels.pack_conv(self.weight, self.bias, weight_scale=1.0 / self.out_divisor))
        shift = self.out_shift.detach().flatten().float() if self.has_shift else None
        self.register_buffer("shift_flat", shift, persistent=False)

    def forward(self, x, image):
        s = _spec()
        if self.repeat_image:
            sc, mode = image, s.SHORTCUT_REPEAT_INPUT
        elif self.has_shift:
            sc, mode = self.shift_flat, s.SHORTCUT_VECTOR
        else:
            sc, mode = None, s.SHORTCUT_NONE
        return self.kernels.conv(x, _packed(self, "conv"), self.out_channels, shortcut=sc,
                                 shortcut_mode=mode, shuffle=self.scale)


class FusedConvAdd(_Fused, ConvAdd):
    _pack = FusedConv2d._pack

    def forward(self, x, residual):
        return self.kernels.conv(x, _packed(self, "conv"), self.out_channels, residual=residual,
                                 residual_mode=_spec().RES_TENSOR)


class FusedConcatFuse(_Fused, ConcatFuse):
    """GELU(1x1 conv of the concatenated block outputs) + residual; how the concatenation is
    handled is the backend's choice (the CPU backend avoids materialising it)."""

    def _pack(self) -> None:
        kernels = self.kernels
        chunks = self.in_channels // self.out_channels  # one block output per chunk
        _store(self, "conv", kernels.pack_concat_conv(self.weight, self.bias, chunks))

    def forward(self, features, residual):
        return self.kernels.concat_conv(features, _packed(self, "conv"), self.out_channels,
                                        act=_spec().ACT_GELU, residual=residual)


class FusedBFEB(_Fused, BFEB):
    """Three BSB launches; the last adds the block residual."""

    def _pack(self) -> None:
        kernels = self.kernels
        for i, bc in enumerate(self.convs):
            _store(self, f"bsb{i}", kernels.pack_bsb(bc.pointwise, bc.depthwise))

    def forward(self, x):
        out = x
        for i in range(len(self.convs)):
            out = self.kernels.bsb(out, _packed(self, f"bsb{i}"), x if i == len(self.convs) - 1 else None)
        return out


class FusedRFMB(_Fused, RFMB):
    """Three 3x3 conv+GELU launches, then ESA with the block residual in its last pass."""

    def _pack(self) -> None:
        kernels = self.kernels
        for i, conv in enumerate(self.convs):
            _store(self, f"c{i}", kernels.pack_conv(conv.weight, conv.bias))
        _store(self, "esa", kernels.pack_esa(self.esa))

    def forward(self, x):
        act = _spec().ACT_GELU
        out = x
        for i, conv in enumerate(self.convs):
            out = self.kernels.conv(out, _packed(self, f"c{i}"), conv.out_channels, act=act)
        return self.kernels.esa(out, _packed(self, "esa"), residual=x)


class FusedRLFB(_Fused, RLFB):
    """Three 3x3 conv+LeakyReLU launches (the last adds the block input), the 1x1, then ESA."""

    def _pack(self) -> None:
        kernels = self.kernels
        for i, conv in enumerate(list(self.convs) + [self.mix]):
            _store(self, f"c{i}", kernels.pack_conv(conv.weight, conv.bias))
        _store(self, "esa", kernels.pack_esa(self.esa))

    def forward(self, x):
        s = _spec()
        out = x
        for i, conv in enumerate(self.convs):
            last = i == len(self.convs) - 1
            out = self.kernels.conv(out, _packed(self, f"c{i}"), conv.out_channels, act=s.ACT_LEAKY,
                                    residual=x if last else None,
                                    residual_mode=s.RES_TENSOR if last else s.RES_NONE)
        out = self.kernels.conv(out, _packed(self, f"c{len(self.convs)}"), self.mix.out_channels, ksize=1)
        return self.kernels.esa(out, _packed(self, "esa"))


class FusedPartialBlock(_Fused, PartialBlock):
    """PFDN block. The attention map is computed at low resolution (la_reduce, then two small
    convs); the gated tensor is never materialised by the Triton backend: the first conv gates
    its input on load (and passes gated channels through in the pruned form), the last
    recomputes it as its residual."""

    def _pack(self) -> None:
        kernels = self.kernels
        a = self.attn
        channels = self.conv3.out_channels
        _store(self, "la", kernels.pack_la(a.reduce))
        _store(self, "down", kernels.pack_conv(a.down.weight, a.down.bias))
        _store(self, "expand", kernels.pack_conv(a.expand.weight, a.expand.bias))
        _store(self, "conv1", kernels.pack_conv(self.conv1.weight, self.conv1.bias, op_channels=channels))
        if self.full:
            _store(self, "conv2", kernels.pack_conv(self.conv2.weight, self.conv2.bias, op_channels=channels))
        _store(self, "conv3", kernels.pack_conv(self.conv3.weight, self.conv3.bias))

    def forward(self, x):
        s, k = _spec(), self.kernels
        c = x.shape[1]
        low = k.la_reduce(x, _packed(self, "la"))
        low = k.conv(low, _packed(self, "down"), self.attn.down.out_channels, stride=2)
        att = k.conv(low, _packed(self, "expand"), self.attn.expand.out_channels, act=s.ACT_SIGMOID)
        if self.full:
            t = k.conv(x, _packed(self, "conv1"), self.conv1.out_channels, act=s.ACT_SILU, att=att,
                       gate_input=True)
            t = k.conv(t, _packed(self, "conv2"), self.split, c_out=c, act=s.ACT_SILU)
        else:
            t = k.conv(x, _packed(self, "conv1"), self.split, c_out=c, act=s.ACT_SILU, att=att,
                       gate_input=True)
        return k.conv(t, _packed(self, "conv3"), self.conv3.out_channels, act=s.ACT_SILU, residual=x,
                      residual_mode=s.RES_GATED_INPUT, att=att)


FUSED_TYPES: dict[type, type] = {
    BFEB: FusedBFEB, RFMB: FusedRFMB, RLFB: FusedRLFB, PartialBlock: FusedPartialBlock,
    AffineInputConv2d: FusedAffineInputConv2d, PixelShuffleTail: FusedPixelShuffleTail,
    ConvAdd: FusedConvAdd, ConcatFuse: FusedConcatFuse, nn.Conv2d: FusedConv2d,
}


# What each backend's kernels run: device types and input dtypes.
BACKEND_RUNS = {
    "cpu": (("cpu",), (torch.float32,)),
    "triton": (("cuda", "cpu"), (torch.float32, torch.float16, torch.bfloat16)),  # cpu: interpreter
    "cuda": (("cuda",), (torch.float32, torch.float16, torch.bfloat16)),
}


def fuse_(model: nn.Module, backend: str = "auto") -> dict[str, nn.Module]:
    """Swap, in place, every module of a type in FUSED_TYPES (exact type, outermost first, and
    for plain convs only those the kernels support) for its fused counterpart running on
    ``backend``: "auto" (as ``load(fused=True)``: chosen for the model's device and dtype by
    ``resolve_backend``; where no fused kernels apply, a warning and nothing is swapped),
    "triton", "cpu" or "cuda" (checked by ``resolve_backend`` too). Idempotent. Returns
    {qualified name: replaced module}.

    The fused forward is inference-only (the kernels have no backward): the model's parameters
    stop requiring grad, and a call that would need a gradient raises instead of returning an
    output that claims ``requires_grad`` but never gets one. Inputs are checked as the
    reference checks them, plus the dtypes and devices the backend runs."""
    already = getattr(model, "_esr_fused_backend", None)
    if already is not None:  # idempotent: the rest of the model goes to the same backend
        if backend not in ("auto", already):
            raise ValueError(f"this model is already fused for backend {already!r}, not {backend!r}")
        backend = already
    weight = next(model.parameters())
    chosen = resolve_backend(backend, weight.device, weight.dtype)
    if chosen == "reference":
        warnings.warn(f"fuse_(backend='auto'): no fused kernels for {weight.device.type}/{weight.dtype} in this "
                      "build; the model stays the reference", stacklevel=2)
        return {}
    if chosen == "triton":
        _prepare_triton(weight.device)
    backend = chosen
    kernels = make_backend(backend)
    replaced: dict[str, nn.Module] = {}
    fused_types = set(FUSED_TYPES.values())

    def walk(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            qual = f"{prefix}{name}"
            if type(child) in fused_types:
                continue  # already fused: its submodules only hold the adopted parameters
            fused_cls = FUSED_TYPES.get(type(child))
            if fused_cls is not None and getattr(fused_cls, "can_fuse", lambda m: True)(child):
                setattr(parent, name, fused_cls.from_reference(child, kernels))
                replaced[qual] = child
            else:
                walk(child, qual + ".")

    with torch.no_grad():
        walk(model, "")
    if replaced or getattr(model, "_esr_fused_backend", None) is not None:
        model.requires_grad_(False)
        if getattr(model, "_esr_fused_backend", None) is None:
            model.register_forward_pre_hook(_check_fused_input)
        model._esr_fused_backend = backend
        model._esr_packed_versions = _param_versions(model)
    return replaced


def _param_versions(model: nn.Module) -> tuple:
    """Version counters of the state dict's tensors (parameters and persistent buffers, not the
    packs): every in-place change (load_state_dict's copy_, p.mul_(), an optimiser step) bumps
    them. About 0.1 ms a forward."""
    # Tensors made under torch.inference_mode() keep no version counter: not tracked (-1).
    return tuple(-1 if t.is_inference() else t._version for t in model.state_dict(keep_vars=True).values())


def _repack_if_changed(model: nn.Module) -> None:
    """Packs are made from the weights once; if any weight changed since (load_state_dict, an
    in-place edit), pack again, so that a fused model never runs stale weights."""
    if torch.compiler.is_compiling():
        return
    if _param_versions(model) == model._esr_packed_versions:
        return
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, _Fused):
                module._pack()
    model._esr_packed_versions = _param_versions(model)


def _check_fused_input(model: nn.Module, args: tuple) -> None:
    """Forward pre-hook of a fused model: the reference's input checks, then the backend's."""
    from .layers import check_input

    x = args[0] if args else None
    name = type(model).__name__
    head = getattr(model, "head", None)
    if isinstance(getattr(head, "weight", None), torch.Tensor):  # this package's SR models
        check_input(x, getattr(model, "min_size", 1), name, head.weight)
    elif not isinstance(x, torch.Tensor):
        return  # another model fused by fuse_: its own forward validates its input
    _repack_if_changed(model)
    backend = model._esr_fused_backend
    devices, dtypes = BACKEND_RUNS[backend]
    if x.dtype not in dtypes:
        raise InputError(f"fused {name} (backend {backend!r}) runs {', '.join(map(str, dtypes))}, not "
                         f"{x.dtype}; use the reference model (esr_models.load(..., fused=False)) for it")
    if x.device.type not in devices:
        raise InputError(f"fused {name} (backend {backend!r}) runs on {' or '.join(devices)}, not {x.device}")
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in model.parameters())):
        raise RuntimeError(f"fused {name} is inference-only (its kernels have no backward): call it under "
                           "torch.no_grad() or torch.inference_mode() with inputs and parameters that do "
                           "not require grad, or train the reference model (esr_models.load(name))")


def make_backend(name: str):
    if name == "triton":
        from esr_kernels.triton_backend import TritonBackend

        return TritonBackend()
    if name == "cpu":
        from esr_kernels.cpu_backend import CpuBackend

        return CpuBackend()
    if name == "cuda":
        from esr_kernels.cuda_backend import CudaBackend

        return CudaBackend()
    raise ValueError(f"no kernel backend {name!r} to fuse with")


def _prepare_triton(device: torch.device) -> None:
    if importlib.util.find_spec("triton") is None:
        raise RuntimeError("backend 'triton' needs triton: pip install -e '.[triton]'")
    if device.type == "cpu":
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            raise RuntimeError("Triton kernels run on CPU tensors only under TRITON_INTERPRET=1, "
                               "which must be set before triton is first imported")
        os.environ["TRITON_INTERPRET"] = "1"  # asked for explicitly: slow, but runs


def _has_extension(name: str) -> bool:
    from esr_kernels.backends import extension_error

    return extension_error(name) is None


def _why_not(name: str) -> str:
    from esr_kernels.backends import extension_error

    err = extension_error(name)
    return f" (import failed: {err})" if err else ""


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
    """The backend that will run: 'triton', 'cpu', or 'reference' (no fused kernels for this
    device in this build)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
    if backend == "cuda":
        if device.type != "cuda":
            raise RuntimeError(f"backend 'cuda' runs on CUDA tensors, not {device.type}")
        if not (_has_extension("_C_cpu") and _has_extension("_C_cuda")):
            raise RuntimeError("backend 'cuda' needs the native esr_kernels CUDA extension, which this "
                               "build does not have (see `esr backends`)" + _why_not("_C_cpu") + _why_not("_C_cuda"))
        return "cuda"
    if backend == "cpu":
        if device.type != "cpu":
            raise RuntimeError(f"backend 'cpu' runs on CPU tensors, not {device.type}")
        if not _has_extension("_C_cpu"):
            raise RuntimeError("backend 'cpu' needs the native esr_kernels extension, which this build "
                               "does not have: install with `pip install --no-build-isolation -e .` "
                               "(see `esr backends`)" + _why_not("_C_cpu"))
        if dtype != torch.float32:
            raise RuntimeError(f"backend 'cpu' runs float32 only, not {dtype}")
        return "cpu"
    if backend == "auto":
        # On CUDA: Triton. No GPU measurement of the native CUDA kernels is recorded in this
        # repository yet (benchmarks/results/), so auto does not choose them.
        if device.type == "cuda" and importlib.util.find_spec("triton") is not None:
            return "triton"
        if device.type == "cpu" and dtype == torch.float32 and _has_extension("_C_cpu"):
            return "cpu"
        return "reference"
    return backend


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


def load_fused(name_or_path, device="cpu", dtype=torch.float32, backend: str = "auto") -> nn.Module:
    """Load a model and swap in the fused kernels for ``backend``. ``model.backend`` says what
    runs: 'triton', 'cpu', or 'reference' when 'auto' finds no fused kernels for the device and
    dtype; then a warning says so and the unfused reference runs."""
    from .loading import load

    device = torch.device(device)
    chosen = resolve_backend(backend, device, dtype)
    model = load(name_or_path, device=device, dtype=dtype)
    if chosen == "reference":
        warnings.warn(f"fused=True: no fused kernels for {device.type}/{dtype} in this build "
                      "(the native CPU extension runs float32; Triton needs CUDA, or "
                      "backend='triton' for its slow CPU interpreter); running the PyTorch reference",
                      stacklevel=2)
    else:
        fuse_(model, chosen)
    model.backend = chosen
    return model
