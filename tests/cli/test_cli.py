"""The esr command, through subprocess, as users run it."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image as PILImage

pytestmark = pytest.mark.shared


@pytest.fixture
def inputs(tmp_path, shared):
    d = tmp_path / "in"
    d.mkdir()
    src = np.asarray(PILImage.open(shared / "data" / "Set5" / "bird.png").convert("RGB"))[:40, :48]
    PILImage.fromarray(src).save(d / "rgb.png")
    rgba = np.dstack([src, np.full(src.shape[:2], 128, np.uint8)])
    PILImage.fromarray(rgba, "RGBA").save(d / "alpha.png")
    PILImage.fromarray(src[..., 0], "L").save(d / "gray.jpg")
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return d


def test_upscale_folder_reports_bad_file_and_does_the_rest(run_esr, inputs, tmp_path):
    out = tmp_path / "out"
    proc = run_esr("upscale", inputs, "-o", out, "--model", "pfdnlite", "-q")
    assert proc.returncode == 1
    assert "corrupt.png" in proc.stderr and "3 upscaled, 0 skipped, 1 failed" in proc.stderr
    rgb = PILImage.open(out / "rgb_x4.png")
    assert rgb.size == (192, 160) and rgb.mode == "RGB"
    alpha = PILImage.open(out / "alpha_x4.png")
    assert alpha.mode == "RGBA" and abs(np.asarray(alpha)[..., 3].astype(int) - 128).max() <= 1
    assert PILImage.open(out / "gray_x4.png").mode == "L"


def test_upscale_matches_python_api_and_glob(run_esr, inputs, tmp_path, models):
    import torch

    out = tmp_path / "out"
    # Exact, so like with like: the CLI runs the reference model on one (1, 3, H, W) contiguous
    # (NCHW) image; oneDNN's float32 convs differ in the last bits between layouts and can between
    # thread counts, so the input is made contiguous here too and the CLI gets this thread count.
    run_esr("upscale", str(inputs / "rgb.*"), "-o", out, "--model", "rlfn", "-q",
            env={"OMP_NUM_THREADS": str(torch.get_num_threads())}, check=0)
    x = torch.from_numpy(np.array(PILImage.open(inputs / "rgb.png"))).permute(2, 0, 1)[None].float() / 255
    x = x.contiguous()
    with torch.inference_mode():
        ref = (models["rlfn"](x)[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(PILImage.open(out / "rgb_x4.png")), ref)


def test_never_overwrites_inputs(run_esr, inputs):
    before = (inputs / "rgb.png").read_bytes()
    proc = run_esr("upscale", inputs / "rgb.png", "-o", inputs, "--suffix", "", "-q")
    assert proc.returncode == 1 and "overwrite an input" in proc.stderr
    assert (inputs / "rgb.png").read_bytes() == before


def test_16bit_in_16bit_out_and_tiling(run_esr, tmp_path, shared):
    import png

    arr = (np.random.default_rng(0).random((24, 30, 3)) * 65535).astype(np.uint16)
    png.from_array(arr.reshape(24, 90), mode="RGB;16").save(str(tmp_path / "deep.png"))
    run_esr("upscale", tmp_path / "deep.png", "-o", tmp_path / "o", "--tile", "16", "--tile-overlap", "4", "-q",
            check=0)
    _, _, _, info = png.Reader(filename=str(tmp_path / "o" / "deep_x4.png")).read()
    assert info["bitdepth"] == 16 and info["size"] == (120, 96)


def test_too_small_input_is_a_clear_error(run_esr, tmp_path):
    PILImage.fromarray(np.zeros((10, 10, 3), np.uint8)).save(tmp_path / "tiny.png")
    proc = run_esr("upscale", tmp_path / "tiny.png", "-o", tmp_path / "o", "--model", "ifadnet", "-q")
    assert proc.returncode == 1 and "at least 15x15" in proc.stderr and "tiny.png" in proc.stderr


def test_missing_input_and_float16(run_esr, tmp_path, inputs):
    proc = run_esr("upscale", tmp_path / "nope.png", inputs / "rgb.png", "-o", tmp_path / "o",
                   "--dtype", "bfloat16", "-q")
    assert proc.returncode == 1 and "nope.png: no such file" in proc.stderr
    assert (tmp_path / "o" / "rgb_x4.png").exists()


def test_eval_json_reports_published_psnr(run_esr, shared, tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    for name in ("baby", "bird"):
        shutil.copy(shared / "data" / "Set5" / f"{name}.png", hr)
    data = json.loads(run_esr("eval", "--model", "ifadnet", "--hr", hr, "--json", check=0).stdout)
    assert len(data["per_image"]) == 2
    assert data["psnr"] == pytest.approx(sum(r["psnr"] for r in data["per_image"]) / 2)
    assert 25 < data["psnr"] < 40 and 0 < data["ssim"] < 1


def test_eval_text_and_info(run_esr, shared):
    full = run_esr("eval", "--model", "pfdnlite", "--hr", shared / "data" / "Set5", "--no-ssim", check=0).stdout
    # The mean prints as 30.126: 0.004 dB inside "30.12x", against the ~1e-5 dB that another CPU's
    # last-bit differences (a uint8 flip here and there) can move it.
    assert "mean" in full and "30.12" in full.splitlines()[-1]
    info = json.loads(run_esr("info", "--model", "rlfn", "--json", check=0).stdout)
    assert info["min_input_size"] == 15 and abs(info["parameters"] - 317e3) < 0.01 * 317e3


@pytest.mark.triton
def test_upscale_fused_triton_matches_reference(run_esr, inputs, tmp_path):
    run_esr("upscale", inputs / "rgb.png", "-o", tmp_path / "ref", "--model", "pfdnlite", "-q", check=0)
    proc = run_esr("upscale", inputs / "rgb.png", "-o", tmp_path / "fused", "--model", "pfdnlite",
                   "--fused", "--backend", "triton", "-q", check=0)
    assert "fused backend: triton" in proc.stderr
    a = np.asarray(PILImage.open(tmp_path / "ref" / "rgb_x4.png")).astype(int)
    b = np.asarray(PILImage.open(tmp_path / "fused" / "rgb_x4.png")).astype(int)
    assert np.abs(a - b).max() <= 1  # 1e-5 agreement can flip a uint8 rounding at most


def test_eval_fused_auto_on_cpu_reports_what_runs(run_esr, shared):
    from esr_kernels import policy

    proc = run_esr("eval", "--model", "rlfn", "--hr", shared / "data" / "Set5", "--no-ssim", "--fused",
                   "--device", "cpu", check=0)
    expected = "cpu" if policy.cpu_auto_reason() is None else "reference"  # any CPU, any ISA level
    assert f"fused backend: {expected}" in proc.stderr
    assert "30.20" in proc.stdout.splitlines()[-1]  # RLFN's Set5 PSNR, fused


def test_eval_reports_bad_images_and_says_what_the_mean_is_over(run_esr, shared, tmp_path):
    hr = tmp_path / "hr"
    hr.mkdir()
    for name in ("baby", "bird"):
        shutil.copy(shared / "data" / "Set5" / f"{name}.png", hr)
    (hr / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (hr / "folder.png").mkdir()                                        # a folder named like an image
    PILImage.fromarray(np.zeros((40, 40, 3), np.uint8)).save(hr / "small.png")  # LR 10x10 < 15
    proc = run_esr("eval", "--model", "rlfn", "--hr", hr, "--no-ssim")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "corrupt.png" in proc.stderr and "folder.png" in proc.stderr
    assert "small.png" in proc.stderr and "10x10 LR" in proc.stderr
    assert "(over 2 of 4 images)" in proc.stdout
    data = json.loads(run_esr("eval", "--model", "rlfn", "--hr", hr, "--no-ssim", "--json").stdout)
    assert data["images"] == 2 and {f["image"] for f in data["failed"]} == {"corrupt.png", "small.png"}
    assert data["psnr"] == pytest.approx(sum(r["psnr"] for r in data["per_image"]) / 2)


def test_upscale_tiles_automatically_when_memory_is_short(run_esr, tmp_path, models, shared):
    import torch

    arr = np.asarray(PILImage.open(shared / "data" / "Set14" / "baboon.png").convert("RGB"))[:96, :80].copy()
    PILImage.fromarray(arr).save(tmp_path / "a.png")
    # RLFN's estimate is 2000 B per LR pixel: 96x80 needs ~15 MB; 8 MB of which half is usable
    proc = run_esr("upscale", tmp_path / "a.png", "-o", tmp_path / "o", "--model", "rlfn", "-q",
                   env={"ESR_MAX_MEMORY_MB": "8"})
    assert proc.returncode == 0, proc.stderr
    assert "tiling automatically with --tile 32" in proc.stderr
    x = torch.from_numpy(arr).permute(2, 0, 1)[None].float() / 255
    with torch.inference_mode():
        whole = (models["rlfn"](x)[0].clamp(0, 1) * 255).round().permute(1, 2, 0).numpy()
    tiled = np.asarray(PILImage.open(tmp_path / "o" / "a_x4.png")).astype(float)
    mse = ((tiled - whole) ** 2).mean()
    assert 0 < mse and 10 * np.log10(255 ** 2 / mse) > 35  # tiled, close to the whole image


@pytest.mark.parametrize("raised, code, bug", [
    ("usage", 2, False), ("oserror", 2, False), ("valueerror", 1, True), ("keyerror", 1, True)])
def test_error_policy_one_line_for_ours_traceback_for_a_bug(raised, code, bug, capsys):
    """EsrError (and OSError: a missing file, a permission) is one "error:" line, exit 2; any
    other exception is a bug: its traceback and a line saying so, exit 1."""
    import argparse

    from esr_models.cli.common import UsageError, run

    def fail(args):
        raise {"usage": UsageError("--tile must be positive"), "oserror": FileNotFoundError("no such file: x"),
               "valueerror": ValueError("internal slip"), "keyerror": KeyError("k")}[raised]

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=fail)
    assert run(parser, []) == code
    err = capsys.readouterr().err
    assert ("Traceback" in err and "This is a bug" in err) == bug
    if not bug:
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_every_package_error_is_an_esr_error():
    """The package's own error classes share the EsrError base (and keep their builtin one)."""
    import esr_models
    from esr_models.cli.common import UsageError
    from esr_models.io.images import ImageReadError
    from esr_models.arch.layers import InputError, InputTooSmallError
    from esr_models.arch.checkpoints import CheckpointError
    from esr_models.interop.onnx import OnnxExportError
    from esr_models.io.outputs import OutputExistsError
    from esr_models.training.recipes import ConfigError
    from esr_models.training.trainer import ResumeError
    from esr_models.io.video import VideoError

    for cls in (UsageError, ImageReadError, InputError, InputTooSmallError, CheckpointError, OnnxExportError,
                OutputExistsError, ConfigError, ResumeError, VideoError, esr_models.WeightsError,
                esr_models.UnknownArchitectureError):
        assert issubclass(cls, esr_models.EsrError), cls
    assert issubclass(OutputExistsError, FileExistsError) and issubclass(UsageError, ValueError)
