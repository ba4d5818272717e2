"""Fused models (esr_models.load(..., fused=True)) against the reference models.

On CPU these run Triton's interpreter (slow): golden inputs, odd sizes, batch 2,
channels_last, the minimum size, low precision, Set5 PSNR, and the swapping contract."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import esr_models

pytestmark = [pytest.mark.triton, pytest.mark.shared]
NAMES = esr_models.MODEL_NAMES
FP32_TOL = 1e-5


@pytest.fixture(scope="module")
def fused(device):
    with torch.inference_mode():
        return {n: esr_models.load(n, device=device, fused=True, backend="triton") for n in NAMES}


@pytest.fixture(scope="module")
def refs(device):
    return {n: esr_models.load(n, device=device) for n in NAMES}


def golden(shared, name, inp, device):
    g = np.load(shared / "golden" / f"{name}_{inp}.npz")
    x = torch.from_numpy(g["lr"]).permute(2, 0, 1)[None].float().to(device) / 255.0
    return x, torch.from_numpy(g["sr"])[None].to(device)


def max_err(a, b):
    return (a.float() - b.float()).abs().max().item()


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("inp", ["comic_odd", "baby"])
def test_fused_matches_reference_and_golden(fused, refs, shared, device, name, inp):
    x, expected = golden(shared, name, inp, device)
    with torch.inference_mode():
        out, ref = fused[name](x), refs[name](x)
    assert fused[name].backend == "triton"
    assert out.shape == ref.shape
    assert max_err(out, ref) <= FP32_TOL
    assert max_err(out, expected) <= FP32_TOL


def image_crops(shared, device, n, h, w):
    """Real image content (the bar is on images: uniform noise drives these models far outside
    [0, 1], where float32 reassociation shows up to ~3e-5)."""
    x, _ = golden(shared, "ifadnet", "baby", device)
    return torch.cat([x[..., 7 * i:7 * i + h, 11 * i:11 * i + w] for i in range(n)])


@pytest.mark.parametrize("name", NAMES)
def test_fused_batch2_channels_last_noncontiguous(fused, refs, shared, device, name):
    # (NCHW inputs are covered by the golden tests; each interpreted forward costs ~10 s.)
    x = image_crops(shared, device, 2, 29, 37)
    with torch.inference_mode():
        ref = refs[name](x)
        assert max_err(fused[name](x.contiguous(memory_format=torch.channels_last)), ref) <= FP32_TOL
        wide = image_crops(shared, device, 2, 29, 45)
        wide[..., 3:40] = x
        assert not wide[..., 3:40].is_contiguous()
        assert max_err(fused[name](wide[..., 3:40]), ref) <= FP32_TOL


@pytest.mark.parametrize("name", NAMES)
def test_fused_minimum_size(fused, refs, shared, device, name):
    size = esr_models.min_input_size(refs[name])
    x = image_crops(shared, device, 1, size, size + 1)
    with torch.inference_mode():
        assert max_err(fused[name](x), refs[name](x)) <= FP32_TOL
        with pytest.raises(ValueError, match=f"at least {size}x{size}"):
            fused[name](torch.rand(1, 3, size - 1, size, device=device))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_fused_low_precision_within_twice_the_references_own_error(refs, shared, device, name, dtype):
    """flash-attention's rule: |fused_lowp - ref_fp32| <= 2 |ref_lowp - ref_fp32| (max abs)."""
    x, _ = golden(shared, name, "comic_odd", device)
    with torch.inference_mode():
        truth = refs[name](x)
        ref_lowp = esr_models.load(name, device=device, dtype=dtype)(x.to(dtype))
        fused_lowp = esr_models.load(name, device=device, dtype=dtype, fused=True, backend="triton")(x.to(dtype))
    assert fused_lowp.dtype == dtype
    assert max_err(fused_lowp, truth) <= 2 * max_err(ref_lowp, truth)


@pytest.mark.parametrize("name", NAMES)
def test_fused_set5_psnr_within_0_005_db(fused, refs, shared, name):
    from esr_models.evaluation import evaluate_folder

    folder = shared / "data" / "Set5"
    with torch.inference_mode():
        ref = evaluate_folder(folder, refs[name].cpu(), with_ssim=False)["psnr"]
        fz = evaluate_folder(folder, lambda t: fused[name](t.to(next(fused[name].buffers()).device)),
                             with_ssim=False)["psnr"]
    assert abs(fz - ref) <= 0.005


def test_fuse_swaps_in_place_keeps_state_dict_and_returns_replaced(device):
    from esr_models.fusion import FusedBFEB, FusedPixelShuffleTail
    from esr_models.ifadnet import BFEB

    model = esr_models.load("ifadnet", device=device)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    replaced = esr_models.fuse_(model)
    assert isinstance(replaced["blocks.0"], BFEB) and isinstance(model.blocks[0], FusedBFEB)
    assert isinstance(model.tail, FusedPixelShuffleTail) and "tail" in replaced
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert esr_models.fuse_(model) == {}  # nothing left to fuse


def test_fused_model_traces_with_torch_compile_fullgraph(fused, refs, shared, device):
    # aot_eager: dynamo + AOTAutograd trace the esr:: ops without graph breaks (on CPU the
    # interpreter's kernels cannot go through inductor; on a GPU see test_gpu.py).
    x = image_crops(shared, device, 1, 20, 23)
    compiled = torch.compile(fused["pfdnlite"], fullgraph=True, backend="aot_eager")
    with torch.inference_mode():
        assert max_err(compiled(x), refs["pfdnlite"](x)) <= FP32_TOL


def test_auto_backend_without_fused_kernels_says_it_runs_the_reference():
    # bfloat16 on CPU: neither the native CPU backend (float32) nor compiled Triton can run it.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = esr_models.load("rlfn", fused=True, backend="auto", device="cpu", dtype=torch.bfloat16)
    assert model.backend == "reference"
    assert any("running the PyTorch reference" in str(w.message) for w in caught)


def test_cuda_backend_on_cpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        esr_models.load("rlfn", fused=True, backend="cuda", device="cpu")


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend"):
        esr_models.load("rlfn", fused=True, backend="tpu")


def test_fuse_leaves_unsupported_convs_alone():
    from esr_models.fusion import FusedConv2d

    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                torch.nn.Conv2d(4, 8, 3, padding=1, padding_mode="reflect"),
                                torch.nn.Conv2d(4, 8, 3, padding=1))
    replaced = esr_models.fuse_(model)
    assert list(replaced) == ["2"] and isinstance(model[2], FusedConv2d)
    assert type(model[0]) is torch.nn.Conv2d and type(model[1]) is torch.nn.Conv2d
