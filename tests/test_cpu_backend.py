"""The native CPU backend (esr_kernels._C_cpu + oneDNN): its ops against the references and
the fused models against the reference models, same bar as the Triton path."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import esr_models
from esr_kernels import reference as R

pytestmark = pytest.mark.skipif(importlib.util.find_spec("esr_kernels._C_cpu") is None,
                                reason="native CPU extension not built (pip install --no-build-isolation -e .)")
FP32_TOL = 1e-5


@pytest.fixture(scope="module")
def native():
    import esr_kernels._C_cpu  # noqa: F401
    import esr_kernels.native  # noqa: F401

    return torch.ops.esr_native


def cl(t):
    return t.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("hw", [(2, 2), (13, 17)], ids=["minimum", "odd"])
def test_bsb_dw_is_reflect_depthwise_gelu(native, hw):
    p = torch.randn(2, 36, *hw)
    w, b, res = torch.randn(36, 1, 3, 3), torch.randn(36), torch.randn(2, 36, *hw)
    out = native.bsb_dw(cl(p), w, b, res)
    ref = F.gelu(F.conv2d(F.pad(p, (1, 1, 1, 1), mode="reflect"), w, b, groups=36)) + res
    assert (out - ref).abs().max() <= 1e-5


def test_gate_matches_reference(native):
    x, att = torch.randn(2, 48, 19, 23), torch.rand(2, 48, 4, 5)
    assert (native.gate(x, att) - R.gate(x, att)).abs().max() <= 1e-6


@pytest.mark.parametrize("case", ["partial", "gated_residual", "repeat_shuffle", "vector_shuffle"])
def test_conv_epilogue(native, case):
    n, h, w = 2, 9, 11
    y = torch.randn(n, 24 if case == "partial" else 48, h, w)
    x = torch.randn(n, 48, h, w)
    att = torch.rand(n, 48, 2, 3)
    if case == "partial":
        out = native.conv_epilogue(y, x, 48, 2, None, 0, None, None, 0, 0)
        ref = torch.cat([F.silu(y), x[:, 24:]], 1)
    elif case == "gated_residual":
        out = native.conv_epilogue(y, None, 48, 2, x, 2, att, None, 0, 0)
        ref = F.silu(y) + R.gate(x, att)
    elif case == "repeat_shuffle":
        img = torch.rand(n, 3, h, w)
        out = native.conv_epilogue(y, None, 48, 0, None, 0, None, img, 1, 4)
        ref = F.pixel_shuffle(y + torch.repeat_interleave(img, 16, 1), 4)
    else:
        vec = torch.rand(3)
        out = native.conv_epilogue(y, None, 48, 0, None, 0, None, vec, 2, 4)
        ref = F.pixel_shuffle(y, 4) + vec.view(1, 3, 1, 1)
    assert out.shape == ref.shape and (out - ref).abs().max() <= 1e-5


def test_esa_tail(native):
    x, s, low, res = torch.randn(2, 36, 17, 19), torch.randn(2, 36, 17, 19), torch.randn(2, 36, 2, 3), torch.randn(2, 36, 17, 19)
    up = F.interpolate(low, size=(17, 19), mode="bilinear", align_corners=False)
    assert (native.esa_tail(x, s, low, res) - (x * torch.sigmoid(s + up) + res)).abs().max() <= 1e-5


@pytest.mark.parametrize("hw", [(7, 7), (9, 8), (127, 127), (84, 85)])
def test_max_pool_7s3_is_floor_mode_max_pool(native, hw):
    x = torch.randn(2, 16, *hw)
    out = native.max_pool_7s3(x)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, F.max_pool2d(x, 7, 3))
    with pytest.raises(RuntimeError, match="smaller than the 7x7 window"):
        native.max_pool_7s3(torch.randn(1, 16, 6, 9))


@pytest.fixture(scope="module")
def cpu_models():
    return {n: esr_models.load(n, fused=True, backend="cpu") for n in esr_models.MODEL_NAMES}


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
@pytest.mark.parametrize("inp", ["baby", "comic_odd"])
def test_cpu_fused_matches_golden_and_reference(models, cpu_models, shared, name, inp):
    g = np.load(shared / "golden" / f"{name}_{inp}.npz")
    x = torch.from_numpy(g["lr"]).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        out = cpu_models[name](x)
        assert cpu_models[name].backend == "cpu"
        assert (out - models[name](x)).abs().max() <= FP32_TOL
        assert (out - torch.from_numpy(g["sr"])[None]).abs().max() <= FP32_TOL


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_cpu_fused_batch2_channels_last_noncontiguous_minimum(models, cpu_models, shared, name):
    g = np.load(shared / "golden" / "ifadnet_baby.npz")
    img = torch.from_numpy(g["lr"]).permute(2, 0, 1)[None].float() / 255.0
    x = torch.cat([img[..., :29, :37], img[..., 40:69, 50:87]])
    size = esr_models.min_input_size(models[name])
    with torch.inference_mode():
        ref = models[name](x)
        assert (cpu_models[name](x) - ref).abs().max() <= FP32_TOL
        assert (cpu_models[name](cl(x)) - ref).abs().max() <= FP32_TOL
        assert (cpu_models[name](img[..., 3:32, 5:42].expand(2, -1, -1, -1)) - models[name](img[..., 3:32, 5:42].expand(2, -1, -1, -1))).abs().max() <= FP32_TOL
        small = img[..., :size, :size + 2]
        assert (cpu_models[name](small) - models[name](small)).abs().max() <= FP32_TOL


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_cpu_fused_onednn_convolutions_without_the_conv_engine(models, shared, name, monkeypatch):
    """ESR_CPU_CONV_ENGINE=0 (and builds without AVX-512) run every conv through oneDNN."""
    monkeypatch.setenv("ESR_CPU_CONV_ENGINE", "0")
    fused = esr_models.load(name, fused=True, backend="cpu")
    assert {m.kernels.engine for m in fused.modules() if hasattr(m, "kernels")} == {False}
    g = np.load(shared / "golden" / f"{name}_comic_odd.npz")
    x = torch.from_numpy(g["lr"]).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        assert (fused(x) - models[name](x)).abs().max() <= FP32_TOL


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_cpu_fused_set5_psnr_within_0_005_db(models, cpu_models, shared, name):
    from esr_models.evaluation import evaluate_folder

    ref = evaluate_folder(shared / "data" / "Set5", models[name], with_ssim=False)["psnr"]
    fused = evaluate_folder(shared / "data" / "Set5", cpu_models[name], with_ssim=False)["psnr"]
    assert abs(fused - ref) <= 0.005


def test_auto_on_cpu_picks_the_native_backend():
    assert esr_models.load("pfdnlite", fused=True).backend == "cpu"


def test_cpu_backend_rejects_low_precision():
    with pytest.raises(RuntimeError, match="float32 only"):
        esr_models.load("pfdnlite", fused=True, backend="cpu", dtype=torch.bfloat16)


def test_cpu_fused_traces_with_compile_fullgraph(models, cpu_models):
    x = torch.rand(1, 3, 24, 31)
    compiled = torch.compile(cpu_models["rlfn"], fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        assert (compiled(x) - models["rlfn"](x)).abs().max() <= FP32_TOL
