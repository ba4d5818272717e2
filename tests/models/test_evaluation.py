"""MATLAB bicubic, metrics and the published PSNR."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import esr_models
from esr_models.evaluation import evaluate_folder, imresize, make_lr, modcrop, psnr, ssim
from esr_models.io.images import read_rgb_uint8


@pytest.mark.shared
@pytest.mark.parametrize("image", ["baby"])
def test_bicubic_lr_matches_upstream_exactly(shared, image):
    hr = modcrop(read_rgb_uint8(shared / "data" / "Set5" / f"{image}.png"), 4)
    lr = make_lr(hr, 4).permute(1, 2, 0).numpy()
    expected = np.load(shared / "golden" / f"ifadnet_{image}.npz")["lr"]
    assert lr.shape == expected.shape
    # Exact against upstream's LR: imresize is float64 matmuls, whose summation order may vary
    # with the BLAS path (~1e-13 of a level); no value here is closer than 6e-7 of a level to a
    # rounding edge.
    assert np.array_equal(lr, expected)


def test_imresize_preserves_constants_and_mean():
    x = torch.full((3, 40, 36), 0.3, dtype=torch.float64)
    assert torch.allclose(imresize(x, scale=0.25), torch.full((3, 10, 9), 0.3, dtype=torch.float64))
    up = imresize(torch.rand(1, 8, 8, dtype=torch.float64), scale=4)
    assert up.shape == (1, 32, 32)


def test_imresize_rows_sum_to_one_and_use_symmetric_border():
    from esr_models.evaluation.imresize import resize_matrix

    m = resize_matrix(17, 5, 5 / 17)
    assert torch.allclose(m.sum(1), torch.ones(5, dtype=torch.float64))
    # A ramp downscaled stays monotonic (symmetric padding keeps edges sensible).
    ramp = torch.arange(32, dtype=torch.float64)
    out = resize_matrix(32, 8, 0.25) @ ramp
    assert torch.all(out[1:] > out[:-1])


def test_psnr_known_value_and_border():
    a = torch.zeros(3, 10, 10)
    b = torch.zeros(3, 10, 10)
    b[:, 2:8, 2:8] = 10  # border 2 crops nothing of the difference
    mse = 100 * 36 / 36
    assert psnr(a, b, border=2) == pytest.approx(10 * np.log10(255 ** 2 / mse))
    assert psnr(a, a) == float("inf")


def test_ssim_identical_is_one_and_noise_lowers_it():
    ramp = torch.linspace(30, 220, 48, dtype=torch.float64)
    img = (ramp[None, :, None] + 0.5 * ramp[None, None, :]).expand(3, 48, 48).clamp(0, 255)
    assert ssim(img, img) == pytest.approx(1.0)
    scores = [ssim(img, (img + torch.randn_like(img) * s).clamp(0, 255)) for s in (2, 10, 40)]
    assert 1 > scores[0] > scores[1] > scores[2] > 0
    assert scores[2] < 0.5


@pytest.mark.shared
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_reproduces_published_psnr(models, shared, shared_tag, name):
    expected = json.loads((shared / "expected_psnr.json").read_text())[shared_tag(name)]
    torch.set_num_threads(max(torch.get_num_threads(), 1))
    for dataset, target in expected.items():
        result = evaluate_folder(shared / "data" / dataset, models[name], with_ssim=False)
        assert abs(result["psnr"] - target) <= 0.01, (dataset, result["psnr"], target)


@pytest.mark.shared
def test_bicubic_baseline_psnr(shared):
    """The protocol itself, with bicubic upscaling as the 'model'."""
    expected = json.loads((shared / "expected_psnr.json").read_text())["bicubic"]

    def bicubic(x):
        return imresize(x[0].double(), scale=4)[None]

    result = evaluate_folder(shared / "data" / "Set5", bicubic, with_ssim=False)
    assert abs(result["psnr"] - expected["Set5"]) <= 0.01


def test_flops_and_params_within_one_percent_of_published(models):
    from esr_models.infer.complexity import count_flops, count_parameters

    published = {"ifadnet": (0.163e6, 9.78e9), "pfdnlite": (0.218e6, 11.95e9), "rlfn": (0.317e6, 19.67e9)}
    for name, (params, flops) in published.items():
        assert count_parameters(models[name]) == pytest.approx(params, rel=0.01)
        assert count_flops(models[name], 256, 256) == pytest.approx(flops, rel=0.01)


@pytest.mark.shared
def test_16bit_and_8bit_copies_of_an_image_evaluate_alike(tmp_path, shared):
    """A 16-bit grey PNG is scaled to 8 bits for the protocol, not clipped to white."""
    import numpy as np
    from PIL import Image

    from esr_models.io.images import read_rgb_uint8

    g8 = np.asarray(Image.open(shared / "data" / "Set5" / "butterfly.png").convert("L"))
    Image.fromarray(g8).save(tmp_path / "g8.png")
    Image.fromarray(g8.astype(np.uint16) * 257).save(tmp_path / "g16.png")  # mode I;16
    a, b = read_rgb_uint8(tmp_path / "g8.png"), read_rgb_uint8(tmp_path / "g16.png")
    assert torch.equal(a, b) and torch.equal(a[0], torch.from_numpy(g8.copy()))
    rgb = shared / "data" / "Set5" / "bird.png"
    assert torch.equal(read_rgb_uint8(rgb), torch.from_numpy(np.array(Image.open(rgb).convert("RGB"))).permute(2, 0, 1))
