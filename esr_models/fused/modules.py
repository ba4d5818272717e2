"""Fused modules: each replaces one reference module, adopts its parameters (same state-dict
keys), asks its kernel backend (``esr_kernels.contract.KernelBackend``) to pack the weights
once, and in ``forward`` calls only the backend's ops with those packs.

Packs (dataclasses, ``esr_kernels.contract.Pack``) are kept in ``module.packs`` by name; their
tensors are also registered as non-persistent buffers, so that ``.to()`` / ``.cuda()`` move
them (``_apply`` rebuilds the packs from the moved buffers) and the state dict is unchanged.

Packs follow the weights on every path by which they change: ``load_state_dict`` (a post-hook
on each fused module repacks it, whatever mode the tensors were made in and whether the model
is later called eagerly or through ``torch.compile``), in-place edits of ordinary tensors (the
fused model's forward pre-hook compares version counters, ``fusion._repack_if_changed``), and
anything else through ``esr_models.fused.fusion.repack_(model)``. Pickling (``torch.save(model)``,
``pickle.dumps``, Ray) stores the module without its packs and backend object (which holds
``torch.ops`` handles): the backend is made again by name, and the packs rebuilt, on load.
"""
from __future__ import annotations

import torch
from torch import nn

from esr_kernels import spec
from esr_kernels.contract import ConvEpilogue
from esr_kernels.packing import fold_esa
from esr_kernels.policy import make_backend

from ..arch.ifadnet import BFEB, RFMB
from ..arch.layers import AffineInputConv2d, ConcatConv, ConcatFuse, ConvAdd, PixelShuffleTail
from ..arch.pfdnlite import PartialBlock
from ..arch.rlfn import RLFB
from ..arch.span import SPAB


def _buffer_name(pack_name: str, path: str) -> str:
    return f"_pack_{pack_name}_{path.replace('.', '_')}"


class _Fused:
    """A fused module: adopts a reference module and packs its weights for the backend.
    ``_pack`` reads the module's own parameters, so it runs again when they change."""

    @classmethod
    def from_reference(cls, ref: nn.Module, kernels):
        """A ``cls`` instance sharing ``ref``'s parameters and submodules (so the state dict is
        unchanged), with fresh containers so that adding buffers does not touch ``ref``."""
        obj = cls.__new__(cls)
        state = {k: (v.copy() if isinstance(v, dict) else v) for k, v in ref.__dict__.items()}
        state["_non_persistent_buffers_set"] = set(ref._non_persistent_buffers_set)
        obj.__dict__.update(state)
        obj.kernels = kernels
        obj.packs = {}
        obj._pack()
        obj.register_load_state_dict_post_hook(_repack_after_load)
        return obj

    def repack(self) -> None:
        """Packs made again from the module's current weights."""
        with torch.no_grad():
            self._pack()

    def __getstate__(self):
        state = dict(self.__dict__)
        weight = next(self.parameters(), None)
        state["kernels"] = _BackendRef.of(self.kernels, weight.device if weight is not None else "cpu")
        state["packs"] = {}
        packed = {_buffer_name(name, path) for name, pack in self.packs.items() for path in pack.tensors()}
        state["_buffers"] = {k: v for k, v in self._buffers.items() if k not in packed}
        state["_non_persistent_buffers_set"] = self._non_persistent_buffers_set - packed
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        # Children (and their tensors) are restored before their parent: pack from them.
        self.repack()

    def _pack(self) -> None:
        raise NotImplementedError

    def _store(self, name: str, pack) -> None:
        self.packs[name] = pack
        for path, t in pack.tensors().items():
            self.register_buffer(_buffer_name(name, path), t, persistent=False)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        moved = {name: pack.map_tensors(lambda path, _t, name=name: getattr(self, _buffer_name(name, path)))
                 for name, pack in self.packs.items()}
        if any(t.dtype != self.packs[name].tensors()[path].dtype
               for name, pack in moved.items() for path, t in pack.tensors().items()):
            # A dtype conversion (model.to(dtype), .half(), even to the dtype it has) converted the
            # packs too, but their dtypes are the backend's choice for the model's dtype (the
            # CPU's bf16 GEMM pairs beside float32 biases): pack again from the weights.
            self.repack()
            return out
        self.packs = moved  # the buffers moved: the packs around them
        return out


def _repack_after_load(module: "_Fused", incompatible_keys) -> None:
    """load_state_dict post-hook: copy_ into inference tensors bumps no version counter, and a
    compiled forward skips the pre-hook's check, so a load always repacks."""
    module.repack()


class _BackendRef:
    """What a fused module pickles instead of its kernel backend: the backend's name and device;
    unpickled, it is a fresh backend from ``make_backend``. One per backend object (pickle's memo
    then shares it, so a model's modules share one backend after loading, as before)."""

    _live: dict = {}

    def __init__(self, name: str, device: str):
        self.name, self.device = name, device

    @classmethod
    def of(cls, kernels, device) -> "_BackendRef":
        key = (id(kernels), str(device))
        ref = cls._live.get(key)
        if ref is None or ref[0] is not kernels:  # (the backend is held here, so its id is not reused)
            ref = cls._live[key] = (kernels, cls(kernels.name, str(device)))
        return ref[1]

    def __reduce__(self):
        return (_make_backend, (self.name, self.device))


def _make_backend(name: str, device: str):
    return make_backend(name, torch.device(device))


class FusedConv2d(_Fused, nn.Conv2d):
    """Plain KxK conv (K in {1, 3}, groups 1, zero padding K // 2, bias) through the backend."""

    epilogue = ConvEpilogue()

    @staticmethod
    def can_fuse(ref: nn.Conv2d, kernels) -> bool:
        k = ref.kernel_size
        return (k[0] == k[1] and k[0] in (1, 3) and ref.groups == 1 and ref.dilation == (1, 1)
                and ref.padding_mode == "zeros" and ref.padding == (k[0] // 2, k[0] // 2)
                and ref.stride[0] == ref.stride[1] and ref.bias is not None
                and kernels.supports_conv(ref))

    def _pack(self) -> None:
        self._store("conv", self.kernels.pack_conv(self.weight, self.bias, self.epilogue, stride=self.stride[0]))

    def forward(self, x):
        return self.kernels.conv(x, self.packs["conv"])


class FusedAffineInputConv2d(_Fused, AffineInputConv2d):
    """Head conv: the input scale is folded into the weight, the shift is the prologue."""

    def _pack(self) -> None:
        # conv((x - t) s) = (s W)(x - t)
        self._store("conv", self.kernels.pack_conv(self.weight * self.in_scale, self.bias))
        shift = self.in_shift.detach().flatten().float() if self.has_shift else None
        self.register_buffer("shift_flat", shift, persistent=False)

    def forward(self, x):
        return self.kernels.conv(x, self.packs["conv"], shift=self.shift_flat)


class FusedPixelShuffleTail(_Fused, PixelShuffleTail):
    """Tail conv writing the final image: shortcut and pixel shuffle in the epilogue; the
    output divisor is folded into weight and bias."""

    def _pack(self) -> None:
        if self.repeat_image:
            mode = spec.SHORTCUT_REPEAT_INPUT
        else:
            mode = spec.SHORTCUT_VECTOR if self.has_shift else spec.SHORTCUT_NONE
        # output_layer: measured on Set5 with the CPU's bf16 GEMM, a bf16 tail cost IFADNet 0.013 dB
        # and RLFN 0.012 dB of PSNR, a float32 one 0.009 (README, "bfloat16 on CPU").
        epilogue = ConvEpilogue(shortcut_mode=mode, shuffle=self.scale, output_layer=True)
        self._store("conv", self.kernels.pack_conv(self.weight, self.bias, epilogue,
                                                   weight_scale=1.0 / self.out_divisor))
        shift = self.out_shift.detach().flatten().float() if self.has_shift else None
        self.register_buffer("shift_flat", shift, persistent=False)

    def forward(self, x, image):
        # The shortcut: the image (repeated), the output shift (a vector) or none (shift_flat None).
        return self.kernels.conv(x, self.packs["conv"], shortcut=image if self.repeat_image else self.shift_flat)


class FusedConvAdd(_Fused, ConvAdd):
    epilogue = ConvEpilogue(residual_mode=spec.RES_TENSOR)
    _pack = FusedConv2d._pack

    def forward(self, x, residual):
        return self.kernels.conv(x, self.packs["conv"], residual=residual)


class FusedConcatFuse(_Fused, ConcatFuse):
    """GELU(1x1 conv of the concatenated block outputs) + residual; how the concatenation is
    handled is the backend's choice (the CPU backend avoids materialising it)."""

    def _pack(self) -> None:
        chunks = self.in_channels // self.out_channels  # one block output per chunk
        epilogue = ConvEpilogue(act=spec.ACT_GELU, residual_mode=spec.RES_TENSOR)
        self._store("conv", self.kernels.pack_concat_conv(self.weight, self.bias, chunks, epilogue))

    def forward(self, features, residual):
        return self.kernels.concat_conv(features, self.packs["conv"], residual)


class FusedConcatConv(_Fused, ConcatConv):
    """1x1 conv of the concatenated features (SPAN), without materialising the concatenation
    where the backend can (as FusedConcatFuse, with no activation or residual)."""

    def _pack(self) -> None:
        chunks = self.in_channels // self.out_channels
        self._store("conv", self.kernels.pack_concat_conv(self.weight, self.bias, chunks, ConvEpilogue()))

    def forward(self, features):
        return self.kernels.concat_conv(features, self.packs["conv"])


class FusedSPAB(_Fused, SPAB):
    """Three 3x3 conv launches: SiLU in the first two's epilogues, the parameter-free attention
    ``(o3 + x) * (sigmoid(o3) - 0.5)`` in the last's (RES_SPAN_ATT, x as its residual), so o3
    is never stored. Returns (block output, silu(o1)) as the reference does."""

    def _pack(self) -> None:
        for i, conv in enumerate(self.convs):
            epilogue = ConvEpilogue(act=spec.ACT_SILU) if i < 2 else ConvEpilogue(residual_mode=spec.RES_SPAN_ATT)
            self._store(f"c{i}", self.kernels.pack_conv(conv.weight, conv.bias, epilogue))

    def forward(self, x):
        k, p = self.kernels, self.packs
        a1 = k.conv(x, p["c0"])
        return k.conv(k.conv(a1, p["c1"]), p["c2"], residual=x), a1


class FusedBFEB(_Fused, BFEB):
    """Three BSB launches; the last adds the block residual."""

    def _pack(self) -> None:
        for i, bc in enumerate(self.convs):
            self._store(f"bsb{i}", self.kernels.pack_bsb(bc.pointwise.weight, bc.depthwise.weight, bc.depthwise.bias))

    def forward(self, x):
        out = x
        n = len(self.convs)
        for i in range(n):
            out = self.kernels.bsb(out, self.packs[f"bsb{i}"], x if i == n - 1 else None)
        return out


class FusedRFMB(_Fused, RFMB):
    """Three 3x3 conv+GELU launches, then ESA with the block residual in its last pass."""

    def _pack(self) -> None:
        for i, conv in enumerate(self.convs):
            self._store(f"c{i}", self.kernels.pack_conv(conv.weight, conv.bias, ConvEpilogue(act=spec.ACT_GELU)))
        self._store("esa", self.kernels.pack_esa(fold_esa(self.esa)))

    def forward(self, x):
        out = x
        for i in range(len(self.convs)):
            out = self.kernels.conv(out, self.packs[f"c{i}"])
        return self.kernels.esa(out, self.packs["esa"], residual=x)


class FusedRLFB(_Fused, RLFB):
    """Three 3x3 conv+LeakyReLU launches (the last adds the block input), then the 1x1 and ESA
    as one backend op (conv_esa: the CPU backend folds the 1x1 into the ESA's passes)."""

    def _pack(self) -> None:
        n = len(self.convs)
        for i, conv in enumerate(self.convs):  # the last adds the block input
            epilogue = ConvEpilogue(act=spec.ACT_LEAKY, residual_mode=spec.RES_TENSOR if i == n - 1 else spec.RES_NONE)
            self._store(f"c{i}", self.kernels.pack_conv(conv.weight, conv.bias, epilogue))
        self._store("mix_esa", self.kernels.pack_conv_esa(self.mix.weight, self.mix.bias, fold_esa(self.esa)))

    def forward(self, x):
        out = x
        n = len(self.convs)
        for i in range(n):
            out = self.kernels.conv(out, self.packs[f"c{i}"], residual=x if i == n - 1 else None)
        return self.kernels.conv_esa(out, self.packs["mix_esa"])


class FusedPartialBlock(_Fused, PartialBlock):
    """PFDN block. The attention map is computed at low resolution (la_reduce, then two small
    convs). Where the backend gates in its convs (``gate_in_conv`` when packed: the GPU
    backends, Triton's under v1), the gated tensor is never materialised: the first conv gates
    its input on load (and passes gated channels through in the pruned form), the last
    recomputes it as its residual. Elsewhere (the CPU backend; Triton's with the v2 conv chosen
    at load) the gate is computed once and passed to both."""

    def _pack(self) -> None:
        k, a = self.kernels, self.attn
        channels = self.conv3.out_channels  # the partial convs' c_out: the rest passes through
        gated = k.gate_in_conv
        self._store("la", k.pack_la_reduce(a.reduce.weight, a.reduce.bias))
        self._store("down", k.pack_conv(a.down.weight, a.down.bias, stride=2))
        self._store("expand", k.pack_conv(a.expand.weight, a.expand.bias, ConvEpilogue(act=spec.ACT_SIGMOID)))
        self._store("conv1", k.pack_conv(self.conv1.weight, self.conv1.bias,
                                         ConvEpilogue(act=spec.ACT_SILU, gate_input=gated), c_out=channels))
        if self.full:
            self._store("conv2", k.pack_conv(self.conv2.weight, self.conv2.bias, ConvEpilogue(act=spec.ACT_SILU),
                                             c_out=channels))
        residual_mode = spec.RES_GATED_INPUT if gated else spec.RES_TENSOR
        self._store("conv3", k.pack_conv(self.conv3.weight, self.conv3.bias,
                                         ConvEpilogue(act=spec.ACT_SILU, residual_mode=residual_mode)))

    def forward(self, x):
        k, p = self.kernels, self.packs
        att = k.conv(k.conv(k.la_reduce(x, p["la"]), p["down"]), p["expand"])
        gated = p["conv1"].epilogue.gate_input  # what the packs were made for (gate_in_conv at load)
        if gated:
            t = k.conv(x, p["conv1"], att=att)
        else:
            x = k.gate(x, att)  # the gated input, from here on the block's residual too
            t = k.conv(x, p["conv1"])
        if self.full:
            t = k.conv(t, p["conv2"])
        return k.conv(t, p["conv3"], residual=x, att=att if gated else None)


FUSED_TYPES: dict[type, type] = {
    BFEB: FusedBFEB, RFMB: FusedRFMB, RLFB: FusedRLFB, PartialBlock: FusedPartialBlock, SPAB: FusedSPAB,
    ConcatConv: FusedConcatConv,
    AffineInputConv2d: FusedAffineInputConv2d, PixelShuffleTail: FusedPixelShuffleTail,
    ConvAdd: FusedConvAdd, ConcatFuse: FusedConcatFuse, nn.Conv2d: FusedConv2d,
}


def can_fuse(module: nn.Module, kernels) -> bool:
    """Whether ``module`` has a fused counterpart that ``kernels`` can run."""
    cls = FUSED_TYPES.get(type(module))
    return cls is not None and getattr(cls, "can_fuse", lambda m, k: True)(module, kernels)
