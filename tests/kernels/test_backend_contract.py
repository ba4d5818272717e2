"""The backend contract (esr_kernels/contract.py) and the policy (esr_kernels/policy.py), apart
from any one backend's numbers (those are in test_fused_models.py and the op tests)."""
from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
import torch

from esr_kernels import contract, cuda_backend, policy
from esr_kernels.contract import KernelBackend, Pack
from esr_kernels.op_args import CONV, ESA, ConvEpilogue, ConvGeometry, EsaWeights

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", list(policy.BACKEND_CLASSES))
def test_every_backend_implements_the_whole_contract(name):
    cls = policy.BACKEND_CLASSES[name]
    assert issubclass(cls, KernelBackend)
    assert not inspect.isabstract(cls), f"{name} leaves {sorted(cls.__abstractmethods__)} unimplemented"
    assert cls.devices and cls.dtypes and cls.name == name


def test_every_pack_type_is_a_frozen_dataclass_of_an_op():
    op_types = {contract.ConvPack, contract.BsbPack, contract.EsaPack, contract.LaReducePack, contract.ConcatConvPack,
                contract.ConvEsaPack}
    import esr_kernels.cpu_backend as cpu
    import esr_kernels.triton_backend as tri

    packs = [c for m in (cpu, tri, cuda_backend) for c in vars(m).values()
             if isinstance(c, type) and issubclass(c, Pack) and c not in op_types and c is not Pack
             and c.__module__ == m.__name__]
    assert len(packs) >= 12
    for cls in packs:
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
        assert any(issubclass(cls, op) for op in op_types), cls


def test_pack_tensors_round_trip_through_nested_packs_and_tuples():
    @dataclasses.dataclass(frozen=True)
    class Inner(contract.ConvPack):
        w: torch.Tensor

    @dataclasses.dataclass(frozen=True)
    class Outer(contract.ConcatConvPack):
        inner: Inner
        parts: tuple
        maybe: object

    inner = Inner(c_conv=1, c_out=1, ksize=1, stride=1, padding=0, c_in=1, epilogue=ConvEpilogue(), w=torch.zeros(1))
    p = Outer(c_out=2, chunks=2, epilogue=ConvEpilogue(act=1), inner=inner, parts=(torch.ones(1), torch.ones(2)),
              maybe=None)
    assert sorted(p.tensors()) == ["inner.w", "parts.0", "parts.1"]
    q = p.map_tensors(lambda path, t: t + 1)
    assert q.c_out == 2 and q.maybe is None and q.epilogue == ConvEpilogue(act=1)
    assert torch.equal(q.inner.w, torch.ones(1)) and torch.equal(q.parts[1], torch.full((2,), 2.0))


def test_pack_tensors_reach_into_argument_groups():
    """A pack holding an argument group (the Triton and CUDA ESA packs hold ``EsaWeights``) lists
    and rebuilds its tensors, and keeps its other fields."""
    @dataclasses.dataclass(frozen=True)
    class Esa(contract.EsaPack):
        weights: EsaWeights

    weights = EsaWeights(*(torch.zeros(1),) * len(EsaWeights.arg_names()), dtype=torch.bfloat16)
    p = Esa(channels=1, c_reduce=1, weights=weights)
    assert sorted(p.tensors()) == sorted(f"weights.{n}" for n in EsaWeights.arg_names())
    q = p.map_tensors(lambda path, t: t + 1)
    assert q.weights.dtype == torch.bfloat16 and all(t.item() == 1 for t in q.weights.as_args())


def test_op_signatures_split_and_join_the_ops_arguments():
    """CONV and ESA: the ops' positional arguments <-> their groups, fields read by name."""
    x, w, b, r = (torch.full((1,), float(i)) for i in range(4))
    args = (x, w, b, 8, 16, 3, 1, 1, 2, r, 1, None, True, None, None, 0, 0)
    assert [n for n, _ in CONV.params()] == ["x", "w_packed", "bias", "c_conv", "c_out", "ksize", "stride", "padding",
                                             "act", "residual", "residual_mode", "att", "gate_input", "shift",
                                             "shortcut", "shortcut_mode", "shuffle"]
    xs, ws, bs, g, e = CONV.split(args)
    assert (xs, ws, bs) == (x, w, b) and g == ConvGeometry(c_conv=8, c_out=16, ksize=3, stride=1, padding=1)
    assert (e.act, e.residual, e.residual_mode, e.gate_input) == (2, r, 1, True)
    # A pack's epilogue holds no tensors: the call's come over its Nones, by name.
    assert CONV.join(x, w, b, g, dataclasses.replace(e, residual=None), residual=r) == args
    with pytest.raises(TypeError, match="residul"):
        CONV.join(x, w, b, g, e, residul=r)
    with pytest.raises(TypeError):
        CONV.split(args[:-1])
    weights = EsaWeights(*(torch.zeros(1),) * len(EsaWeights.arg_names()))
    esa_args = ESA.join(x, weights, None)
    assert len(esa_args) == 12 and ESA.split(esa_args) == (x, weights, None)


def test_the_cuda_channel_counts_are_those_the_kernels_are_built_for():
    """csrc/common/channels.h instantiates the CUDA kernels; cuda_backend sends other widths to
    Triton. The two lists must agree."""
    header = (ROOT / "csrc" / "common" / "channels.h").read_text()

    def counts(fn):
        body = re.search(rf"bool {fn}\(.*?\n}}", header, re.S).group(0)
        return {tuple(int(v) for v in m) if len(m) > 1 else int(m[0])
                for m in (re.findall(r"== (\d+)", cond) for cond in re.findall(r"if \(([^)]*)\)", body))}

    assert counts("bsb") == cuda_backend.CUDA_BSB_CHANNELS
    assert counts("esa") == cuda_backend.CUDA_ESA_CHANNELS
    assert counts("la") == cuda_backend.CUDA_LA_CHANNELS


def test_auto_policy():
    native_is_faster = policy.cpu_auto_reason() is None  # any CPU, any ISA level
    assert policy.resolve_backend("auto", torch.device("cpu")) == ("cpu" if native_is_faster else "reference")
    # float16 and bfloat16 on CPU: as float32 (the native backend runs them; no other backend runs
    # them on CPU tensors); float64: nothing fused.
    for dtype in (torch.float16, torch.bfloat16):
        assert policy.resolve_backend("auto", torch.device("cpu"), dtype) == policy.resolve_backend(
            "auto", torch.device("cpu"))
    assert policy.resolve_backend("auto", torch.device("cpu"), torch.float64) == "reference"
    with pytest.raises(RuntimeError, match="runs on cuda tensors"):
        policy.resolve_backend("cuda", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown backend"):
        policy.resolve_backend("tpu", torch.device("cpu"))
    assert "interpreter" in (policy.backend_unavailable_reason("triton", torch.device("cpu")) or "interpreter")
