"""Every esr_native tensor op (schemas: csrc/common/schemas.cpp) on the CPU extension: its
fake (esr_kernels/native.py) gives the real output's dtype, shape and strides, it passes
torch.library.opcheck, and its values match esr_kernels/reference.py where reference.py has the
semantics. Inputs: batch 2, odd sizes, contiguous / channels_last / non-contiguous."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._pytree import tree_map

from esr_kernels import reference as R
from esr_kernels.op_args import ConvEpilogue, ConvGeometry
from esr_kernels.packing import pack_bsb_cpu, pack_gemm_1x1, pack_im2col_3x3, pack_winograd_3x3, pad_vector, round_up16
from esr_kernels.spec import (ACT_GELU, ACT_LEAKY, ACT_NONE, ACT_SILU, RES_GATED_INPUT, RES_NONE, RES_TENSOR,
                              SHORTCUT_NONE, SHORTCUT_REPEAT_INPUT, SHORTCUT_VECTOR)

pytestmark = pytest.mark.native_cpu  # skipped unless the extension is built (conftest)
FP32_TOL = 1e-5
LAYOUTS = ["contiguous", "channels_last", "strided"]
# Every tensor op of the esr_native namespace (conv_engine_available, empty_cache, set_cache_limit,
# cache_limit and cpu_isa_info take no tensors).
OPS = ["bsb_dw", "gate", "conv_epilogue", "esa_tail", "conv3x3_winograd", "conv1x1", "esa_gate_1x1", "conv3x3_im2col",
       "max_pool_7s3", "bsb_packed", "bsb", "esa_out", "la_reduce"]


@pytest.fixture(scope="module")
def native():
    import esr_kernels._C_cpu  # noqa: F401
    import esr_kernels.native  # noqa: F401

    return torch.ops.esr_native


def layout(t: torch.Tensor, kind: str) -> torch.Tensor:
    """t's values in the given memory layout; "strided": a non-contiguous view (every other
    column of a larger tensor, offset by one row)."""
    if kind == "contiguous":
        return t.contiguous()
    if kind == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    n, c, h, w = t.shape
    view = torch.full((n, c, h + 2, 2 * w + 1), float("nan"))[:, :, 1:h + 1, 1::2]
    view.copy_(t)
    assert not view.is_contiguous() and not view.is_contiguous(memory_format=torch.channels_last)
    return view


def eye_1x1(c: int) -> torch.Tensor:
    """An identity 1x1 conv in reference.pack_conv_weight's layout: reference ops with it are
    the ops without their conv (exact in float32: 1 * v + 0 * others)."""
    return R.pack_conv_weight(torch.eye(c)[:, :, None, None])


def epilogue_reference(y, passthrough, c_out, act, residual, residual_mode, att, shortcut, shortcut_mode, shuffle):
    """conv_epilogue's semantics: reference.conv with an identity 1x1 conv over y (the partial
    channels [c_conv, c_out) from passthrough)."""
    c_conv = y.shape[1]
    x = y if passthrough is None else torch.cat([y, passthrough[:, c_conv:]], 1)
    return R.conv(x, eye_1x1(c_conv), torch.zeros(c_conv), ConvGeometry(c_conv, c_out, 1, 1, 0),
                  ConvEpilogue(act=act, residual=residual, residual_mode=residual_mode, att=att, shortcut=shortcut,
                               shortcut_mode=shortcut_mode, shuffle=shuffle))


def make_case(native, name: str, kind: str):
    """(args, reference output or None) of op ``name`` with its main input(s) in layout ``kind``."""
    g = torch.Generator().manual_seed(sum(map(ord, name)) * 7 + LAYOUTS.index(kind))

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    L = lambda t: layout(t, kind)  # noqa: E731
    if name == "bsb_dw":
        p, w, b, res = randn(2, 36, 13, 17), randn(36, 1, 3, 3, scale=0.3), randn(36), randn(2, 36, 13, 17)
        return (L(p), w, b, res), R.bsb(p, eye_1x1(36), w, b, res)
    if name == "gate":
        x, att = randn(2, 48, 19, 23), torch.rand(2, 48, 4, 5, generator=g)
        return (L(x), att), R.gate(x, att)
    if name == "conv_epilogue":
        y, img = randn(2, 48, 5, 7), torch.rand(2, 3, 5, 7, generator=g)
        args = (L(y), None, 48, ACT_NONE, None, RES_NONE, None, L(img), SHORTCUT_REPEAT_INPUT, 4)
        return args, epilogue_reference(y, None, 48, ACT_NONE, None, RES_NONE, None, img, SHORTCUT_REPEAT_INPUT, 4)
    if name == "esa_tail":  # no reference.py op of its own: values in test_cpu_backend.py
        x = randn(2, 36, 17, 19)
        return (L(x), randn(2, 36, 17, 19), randn(2, 36, 2, 3), randn(2, 36, 17, 19)), None
    if name in ("conv3x3_winograd", "conv1x1"):
        if not native.conv_engine_available():
            pytest.skip("no conv engine at the ISA level that runs (it needs AVX-512)")
        k = 3 if name == "conv3x3_winograd" else 1
        x, res = randn(2, 36, 11, 13), randn(2, 36, 11, 13)
        w, b = randn(36, 36, k, k, scale=1 / (k * 6)), randn(36)
        bp = pad_vector(b, round_up16(36), w)
        tail = (36, ACT_SILU, None, 36, res, RES_TENSOR, None, None, SHORTCUT_NONE, 0)
        ref = R.conv(x, R.pack_conv_weight(w), b, ConvGeometry(36, 36, k, 1, k // 2),
                     ConvEpilogue(act=ACT_SILU, residual=res, residual_mode=RES_TENSOR))
        if k == 3:
            return (L(x), pack_winograd_3x3(w), bp, *tail), ref
        return ([L(x)], pack_gemm_1x1(w), bp, *tail), ref
    if name in ("esa_gate_1x1", "conv3x3_im2col") and not native.conv_engine_available():
        pytest.skip("no conv engine at the ISA level that runs (it needs AVX2)")
    if name == "esa_gate_1x1":  # = conv1x1 (the folded full-resolution branch) then esa_tail
        x, w, b = randn(2, 36, 17, 19), randn(36, 36, 1, 1, scale=1 / 6), randn(36)
        low, res = randn(2, 36, 2, 3), randn(2, 36, 17, 19)
        logits = torch.nn.functional.conv2d(x, w, b) + R.upsample(low, (17, 19))
        return (L(x), pack_gemm_1x1(w), pad_vector(b, round_up16(36), w), low, res, False), x * torch.sigmoid(logits) + res
    if name == "conv3x3_im2col":  # an RGB head (3 input channels) of stride 2, with an activation and a residual
        x, w, b, res = randn(2, 3, 11, 14), randn(20, 3, 3, 3, scale=0.3), randn(20), randn(2, 20, 6, 7)
        tail = (20, ACT_SILU, None, 20, res, RES_TENSOR, None, None, SHORTCUT_NONE, 0)
        ref = R.conv(x, R.pack_conv_weight(w), b, ConvGeometry(20, 20, 3, 2, 1),
                     ConvEpilogue(act=ACT_SILU, residual=res, residual_mode=RES_TENSOR))
        return (L(x), pack_im2col_3x3(w), pad_vector(b, round_up16(20), w), 2, 1, *tail), ref
    if name == "max_pool_7s3":
        x = randn(2, 16, 23, 26)
        return (L(x),), R.la_reduce(x, eye_1x1(16), torch.zeros(16))
    if name == "bsb_packed":
        if not native.conv_engine_available():
            pytest.skip("no conv engine at the ISA level that runs (it needs AVX-512)")
        x, pw, dw, db = randn(2, 36, 9, 14), randn(36, 36, 1, 1, scale=1 / 6), randn(36, 1, 3, 3, scale=0.3), randn(36)
        p = pack_bsb_cpu(pw, dw, db)
        return (L(x), p["pw"], p["taps"], p["bias"], None), R.bsb(x, R.pack_conv_weight(pw), dw, db)
    if name == "bsb":
        x, pw, dw, db, res = (randn(2, 36, 9, 14), randn(36, 36, scale=1 / 6), randn(36, 9, scale=0.3), randn(36),
                              randn(2, 36, 9, 14))
        return (L(x), pw, dw, db, L(res)), R.bsb(x, R.pack_conv_weight(pw[:, :, None, None]), dw.reshape(36, 1, 3, 3),
                                                 db, res)
    if name == "esa_out":  # values against reference.esa: tests/kernels/test_shared_maths.py
        x = randn(2, 46, 15, 17)
        return (L(x), randn(2, 16, 1, 2), randn(16, 46, scale=0.1), randn(16), randn(46, 16, scale=0.2), randn(46),
                None), None
    if name == "la_reduce":
        x, w, b = randn(2, 48, 23, 40), randn(16, 48, scale=1 / 7), randn(16)
        return (L(x), w, b), R.la_reduce(x, R.pack_conv_weight(w[:, :, None, None]), b)
    raise AssertionError(name)


def test_every_tensor_op_is_covered(native):
    import esr_kernels.native as fakes  # noqa: F401

    defined = {s.name.split("::")[1] for s in torch._C._jit_get_all_schemas() if s.name.startswith("esr_native::")}
    no_tensors = {"conv_engine_available", "empty_cache", "set_cache_limit", "cache_limit", "cpu_isa_info",
                  "set_bf16_gemm", "bf16_gemm", "brgemm_packs_weights",
                  "brgemm_cache_entries"}
    assert defined - no_tensors == set(OPS)


@pytest.mark.parametrize("kind", LAYOUTS)
@pytest.mark.parametrize("name", OPS)
def test_fake_matches_real_output_and_values_match_reference(native, name, kind):
    args, ref = make_case(native, name, kind)
    op = getattr(native, name).default
    out = op(*args)
    with FakeTensorMode() as mode:
        fake_args = tree_map(lambda a: mode.from_tensor(a) if isinstance(a, torch.Tensor) else a, args)
        fake = op(*fake_args)
    assert (fake.dtype, fake.shape, fake.stride()) == (out.dtype, out.shape, out.stride())
    assert out.device == args[0][0].device if name == "conv1x1" else out.device == args[0].device
    if ref is not None:
        assert out.shape == ref.shape
        assert (out - ref).abs().max() <= FP32_TOL


@pytest.mark.parametrize("kind", ["channels_last", "strided"])
@pytest.mark.parametrize("name", OPS)
def test_opcheck(native, name, kind):
    args, _ = make_case(native, name, kind)
    torch.library.opcheck(getattr(native, name).default, args)


STUB = r"""
// A stand-in for a second native extension (as _C_cuda is to _C_cpu): schemas.cpp plus a
// PyInit that calls esr_schemas::define(), like both real extensions.
#include <Python.h>
#include <exception>
#include "schemas.h"
static PyModuleDef stub_module = {PyModuleDef_HEAD_INIT, "esr_schema_stub", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit_esr_schema_stub(void) {
  try { esr_schemas::define(); } catch (const std::exception& e) { PyErr_SetString(PyExc_ImportError, e.what()); return nullptr; }
  return PyModule_Create(&stub_module);
}
"""

CHECK = r"""
import importlib.util, sys, torch
spec = importlib.util.spec_from_file_location("esr_schema_stub", sys.argv[1])
def stub():
    importlib.util.module_from_spec(spec)  # PyInit runs here
def cpu():
    import esr_kernels._C_cpu  # noqa: F401
for step in sys.argv[2].split(","):
    {"stub": stub, "cpu": cpu}[step]()
ops = torch.ops.esr_native
if "cpu" in sys.argv[2]:
    x = torch.randn(1, 48, 7, 7)
    assert ops.la_reduce(x, torch.randn(16, 48), torch.randn(16)).shape == (1, 16, 1, 1)
    assert isinstance(ops.conv_engine_available(), bool)
print(sorted(str(ops.bsb.default._schema).split("(")[:1]))
"""


@pytest.fixture(scope="module")
def schema_stub(tmp_path_factory):
    import shutil

    from torch.utils import cpp_extension

    if shutil.which("ninja") is None:
        pytest.skip("ninja not installed: cannot build the stub extension")
    root = tmp_path_factory.mktemp("stub")
    common = Path(__file__).resolve().parents[2] / "csrc" / "common"
    (root / "stub.cpp").write_text(STUB)
    mod = cpp_extension.load("esr_schema_stub", [str(root / "stub.cpp"), str(common / "schemas.cpp")],
                             extra_include_paths=[str(common)], build_directory=str(root), is_python_module=False,
                             verbose=False)
    del mod
    return root / "esr_schema_stub.so"


@pytest.mark.parametrize("order", ["stub,cpu", "cpu,stub", "stub"])
def test_schemas_are_defined_by_whichever_extension_loads_first(schema_stub, order):
    """Both native extensions compile csrc/common/schemas.cpp and define the schemas from PyInit
    unless already defined: either import order works, and an extension works alone."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", CHECK, str(schema_stub), order], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "esr_native::bsb" in proc.stdout
