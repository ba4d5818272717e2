"""What cannot be used is one clear error naming it, never a traceback (issue #18): bad
environment variables, checkpoints that do not fit their architecture (through the CLI, the
library and spandrel's loader), training configs with unknown tables or keys, a training run none
of whose validation images can be used. The CLI through subprocess, as users meet it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.shared  # the CLI loads the upstream weights


def weights_dir() -> Path:
    return Path(os.environ["ESR_WEIGHTS_DIR"])


# ---------------------------------------------------------------- bad environment variables

@pytest.mark.parametrize("name,value", [("ESR_MAX_MEMORY_MB", "abc"), ("ESR_MAX_MEMORY_MB", "-5"),
                                        ("ESR_MAX_MEMORY_MB", "nan"), ("ESR_CPU_CACHE_MB", "lots"),
                                        ("ESR_CPU_CONV_ENGINE", "maybe"), ("ESR_WEIGHTS_DIR", "FILE"),
                                        ("ESR_CACHE_DIR", "FILE"), ("ESR_CPU_CACHE_MB", "abc"),
                                        ("ESR_CPU_CACHE_MB", "-1"), ("ESR_CPU_CACHE_MB", "1.5"),
                                        ("ESR_CPU_ISA", "bogus"), ("ESR_CPU_GEMM", "amx")])
def test_a_bad_environment_variable_is_a_usage_error_naming_it(run_esr, random_png, tmp_path, name, value):
    src = random_png(tmp_path / "a.png")
    if value == "FILE":
        value = str(random_png(tmp_path / "not-a-folder.png"))
    proc = run_esr("upscale", src, "-o", tmp_path / "out", "--model", "pfdnlite", "-q", env={name: value})
    assert proc.returncode == 2, proc.stderr
    assert name in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_a_bad_cpu_cache_limit_names_the_variable_and_what_it_takes(run_esr):
    """Issue 27: ESR_CPU_CACHE_MB is parsed once, in Python (esr_kernels.env): garbage is refused
    by every command (the reference path too) with what the variable takes."""
    proc = run_esr("backends", env={"ESR_CPU_CACHE_MB": "abc"})
    assert proc.returncode == 2 and not proc.stdout
    assert "error: environment variable ESR_CPU_CACHE_MB='abc': expected a whole number of megabytes" in proc.stderr


def test_a_cpu_cache_limit_past_64_bits_means_no_limit(run_esr, random_png, tmp_path):
    """Issue 27: 99999999999999999999 MB overflowed the C++ parse and turned the cache off; it is
    a valid number (no limit), so the command runs."""
    src = random_png(tmp_path / "a.png")
    run_esr("upscale", src, "-o", tmp_path / "out", "--model", "pfdnlite", "--fused", "-q",
            env={"ESR_CPU_CACHE_MB": "99999999999999999999"}, check=0)
    assert (tmp_path / "out" / "a_x4.png").exists()


@pytest.mark.parametrize("command", ["upscale", "eval"])
def test_backend_without_fused_is_a_usage_error(run_esr, random_png, tmp_path, command):
    """Issue 27: --backend picks the fused backend; without --fused it was ignored (the reference
    ran, exit 0). Refused, as --ray-workers without --ray is; the plain command still runs."""
    src = random_png(tmp_path / "hr" / "a.png", size=(80, 80))
    args = (["upscale", src, "-o", tmp_path / "out", "-q"] if command == "upscale"
            else ["eval", "--hr", tmp_path / "hr", "--no-ssim"])
    proc = run_esr(*args, "--model", "pfdnlite", "--backend", "cpu")
    assert proc.returncode == 2, proc.stderr
    assert "error: --backend cpu is an option of --fused" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()
    run_esr(*args, "--model", "pfdnlite", check=0)  # the default backend needs no --fused


def test_eval_names_a_too_small_image_once(run_esr, random_png, tmp_path):
    """Issue 27: "error: small.png: small.png: its 40x40 HR ..." named the file twice."""
    random_png(tmp_path / "hr" / "small.png", size=(40, 40))
    proc = run_esr("eval", "--hr", tmp_path / "hr", "--model", "ifadnet", "--no-ssim")
    assert proc.returncode == 1, proc.stderr
    line = next(l for l in proc.stderr.splitlines() if "HR makes" in l)
    assert line.startswith("error: small.png: its 40x40 HR makes a 10x10 LR") and line.count("small.png") == 1


# ---------------------------------------------------------------- checkpoints that do not fit

def _broken_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, list[str], list[str], str]]:
    """name -> (file, missing keys, unexpected keys, architecture)."""
    wdir = weights_dir()
    ifad = torch.load(wdir / "team33_IFADNet.pth", weights_only=True)["params_ema"]
    no_up = {k: v for k, v in ifad.items() if not k.startswith("upsampler.")}
    no_up["extra.weight"] = torch.zeros(1)
    torch.save(no_up, tmp_path / "ifadnet_no_upsampler.pth")
    pfd = torch.load(wdir / "team01_pfdnlite.pth", weights_only=True)
    torch.save({k: v for k, v in pfd.items() if not k.startswith("tail.")}, tmp_path / "pfdnlite_no_tail.pth")
    return {
        "ifadnet": (tmp_path / "ifadnet_no_upsampler.pth", ["upsampler.upsampleOneStep.0.weight"],
                    ["extra.weight"], "IFADNet"),
        "pfdnlite": (tmp_path / "pfdnlite_no_tail.pth", ["tail.0.weight", "tail.0.bias"], [], "PFDNLite"),
    }


def _names_keys(text: str, missing, unexpected, arch) -> bool:
    return arch in text and "missing" in text and all(k in text for k in missing + unexpected) \
        and "Traceback" not in text and "KeyError" not in text


@pytest.mark.parametrize("which", ["ifadnet", "pfdnlite"])
@pytest.mark.parametrize("command", ["upscale", "eval", "export-o", "export-onnx"])
def test_a_checkpoint_with_missing_keys_is_one_clear_error(run_esr, random_png, tmp_path, which, command):
    ckpt, missing, unexpected, arch = _broken_checkpoints(tmp_path)[which]
    src = random_png(tmp_path / "hr" / "a.png", size=(80, 80))
    if command == "upscale":
        proc = run_esr("upscale", src, "-o", tmp_path / "out", "--model", ckpt, "-q")
    elif command == "eval":
        proc = run_esr("eval", "--hr", tmp_path / "hr", "--model", ckpt, "--no-ssim")
    elif command == "export-o":
        proc = run_esr("export", ckpt, "-o", tmp_path / "x.pth")
    else:
        proc = run_esr("export", ckpt, "--onnx", tmp_path / "x.onnx")
    assert proc.returncode in (1, 2), proc.stderr
    assert _names_keys(proc.stderr, missing, unexpected, arch), proc.stderr
    assert str(ckpt) in proc.stderr


def test_missing_keys_through_the_library_and_spandrels_loader(tmp_path):
    import esr_models
    from esr_models.arch.checkpoints import CheckpointError, detect_checked

    for ckpt, missing, unexpected, arch in _broken_checkpoints(tmp_path).values():
        with pytest.raises(CheckpointError) as info:
            esr_models.load(ckpt)
        assert _names_keys(str(info.value), missing, unexpected, arch)
        # spandrel's loader (esr_models.interop.spandrel) goes through detect_checked
        with pytest.raises(CheckpointError) as info:
            detect_checked(torch.load(ckpt, weights_only=True))
        assert _names_keys(str(info.value), missing, unexpected, arch)


# ---------------------------------------------------------------- training configs and runs that cannot be right

@pytest.mark.parametrize("toml, named", [
    ('model = "pfdnlite"\n[defualts]\nlr = 1e-3\n', "'defualts' (did you mean 'defaults'?)"),
    ('model = "pfdnlite"\n[[stage]]\niters = 2\n', "'stage' (did you mean 'stages'?)"),
    ('model = "pfdnlite"\n[arch]\nchanels = 8\n', "'chanels' (did you mean 'channels'?)"),
    ('model = "pfdnlite"\n[defaults]\nlearning_rate = 1e-3\n', "[defaults]: unknown setting 'learning_rate'"),
    ('model = "pfdnlite"\n[[stages]]\niters = 2\n[[stages]]\npatchh = 32\n', "[[stages]] 2: unknown setting 'patchh'"),
    ('model = "pfdnlite"\nstages = 3\n', "'stages' must be an array of tables"),
    ('model = "pfdnlitee"\n', "model 'pfdnlitee'"),
])
def test_unknown_tables_and_keys_in_a_training_config_are_errors_naming_them(run_esr, random_png, tmp_path, toml, named):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(toml)
    random_png(tmp_path / "train" / "a.png", size=(64, 64))
    random_png(tmp_path / "val" / "a.png", size=(64, 64))
    r = run_esr("train", "--config", cfg, "--train-hr", tmp_path / "train", "--val-hr", tmp_path / "val",
                "--out", tmp_path / "run", "--iters", 1, "--num-workers", 0, "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and named in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_file_is_checked_as_the_recipes_are():
    from esr_models.training.recipes import RECIPES, ConfigError, check_arch, check_config, load_config

    for name in RECIPES:  # the shipped recipes pass their own check
        cfg = load_config(name)
        check_arch(cfg["model"], cfg.get("arch", {}))
    with pytest.raises(ConfigError, match="'defualts'"):
        check_config({"defualts": {}})


def test_a_run_whose_validation_images_are_all_unusable_is_refused_before_training(run_esr, random_png, tmp_path):
    random_png(tmp_path / "train" / "a.png", size=(64, 64))
    random_png(tmp_path / "val" / "small.png", size=(20, 20))  # PFDNLite x4 needs an HR of at least 28x28
    (tmp_path / "val" / "broken.png").write_bytes(b"not a png")
    r = run_esr("train", "--model", "pfdnlite", "--train-hr", tmp_path / "train", "--val-hr", tmp_path / "val",
                "--out", tmp_path / "run", "--iters", 1, "--patch", 32, "--batch", 1, "--num-workers", 0,
                "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "none of its 2 validation image(s) can be used" in r.stderr and "small.png (20x20" in r.stderr
    assert "broken.png (unreadable)" in r.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
