"""Training: recipes, data pipeline, losses, a short run from scratch, distillation, EMA,
exact resume, export round trip. Small and CPU-only (patch 64, a few iterations)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import esr_models
from esr_models.evaluation.protocol import make_lr, modcrop
from esr_models.io.images import read_rgb_uint8
from esr_models.training.data import PairedPatches, make_loader
from esr_models.training.deploy_checkpoint import export_deploy_checkpoint
from esr_models.training.models import deploy, trainable
from esr_models.training.recipes import ConfigError, load_config, resolve_stages
from esr_models.training.trainer import TrainOptions, Trainer, pixel_loss

# Tests that read ../shared (images, upstream weights) carry the ``shared`` marker; the rest
# (recipes, losses, export layouts of fresh models, CLI usage) run anywhere.


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small convs, a shared machine


def _crops(src: Path, dst: Path, size: int, per_image: int = 1, limit: int | None = None) -> Path:
    """Square HR crops (PNG) of the images in ``src``."""
    dst.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.png"))[:limit]
    for f in files:
        img = np.array(Image.open(f).convert("RGB"))
        h, w = img.shape[:2]
        for j in range(per_image):
            y = (h - size) * j // max(1, per_image - 1) if per_image > 1 else (h - size) // 2
            x = (w - size) // 2
            Image.fromarray(img[y:y + size, x:x + size]).save(dst / f"{f.stem}_{j}.png")
    return dst


@pytest.fixture(scope="module")
def folders(shared, tmp_path_factory):
    root = tmp_path_factory.mktemp("train-data")
    train = _crops(shared / "data" / "Set14", root / "train", 128)
    val = _crops(shared / "data" / "Set5", root / "val", 96)
    return train, val


def _log(out: Path) -> list[dict]:
    with open(out / "log.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- recipes

def test_recipes_follow_factsheets():
    ecnu = resolve_stages(load_config("ifadnet-ecnu"), {})
    assert load_config("ifadnet-ecnu")["model"] == "ifadnet" and len(ecnu) == 2
    s1, s2 = ecnu
    assert (s1["patch"], s1["batch"], s1["loss"], s1["optimizer"], s1["lr"]) == (256, 64, "l1", "adam", 2e-3)
    assert s1["milestones"] == [100000, 500000, 800000, 900000, 950000] and s1["iters"] == 1000000
    assert s1["gamma"] == 0.5 and s1["distill_loss"] == "l1" and s1["distill_weight"] > 0 and s1["teacher"]
    assert (s2["patch"], s2["loss"], s2["lr"], s2["batch"]) == (640, "mse", 2e-3, 64)
    bsr_cfg = load_config("pfdnlite-bsr")
    bsr = resolve_stages(bsr_cfg, {})
    assert bsr_cfg["arch"]["block_kinds"] == [True] * 4 and len(bsr) == 4
    assert [(s["loss"], s["lr"], s["patch"], s["batch"]) for s in bsr] == [
        ("l1", 5e-4, 256, 96), ("charbonnier", 3e-4, 256, 96), ("mse", 1e-4, 480, 64), ("mse", 1e-4, 480, 64)]
    assert all(s["optimizer"] == "adamw" and s["iters"] == 500000 for s in bsr)
    assert all(s["milestones"] == [100000, 200000, 300000, 400000] for s in bsr)
    assert [s["prune_blocks"] for s in bsr] == [[], [], [], [1, 2]]


def test_iteration_scaling_and_overrides(tmp_path):
    cfg = load_config("ifadnet-ecnu")
    short = resolve_stages(cfg, {"patch": 64, "val_every": 7}, iter_scale=1e-4)
    assert short[0]["iters"] == 100 and short[0]["milestones"] == [10, 50, 80, 90, 95]
    assert short[0]["patch"] == 64 and short[1]["patch"] == 64 and short[0]["val_every"] == 7
    fixed = resolve_stages(cfg, {}, iters=20)
    assert fixed[0]["iters"] == 20 and fixed[0]["milestones"] == [2, 10, 16, 18, 19]
    assert fixed[0]["val_every"] == 2  # scaled, at most about 10 validations a stage
    assert resolve_stages(cfg, {}, iter_scale=0.1)[0]["val_every"] == 5000  # never rarer than the recipe
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve_stages({"stages": [{"learning_rate": 1}]}, {})
    p = tmp_path / "c.toml"
    p.write_text('model = "rlfn"\n[[stages]]\niters = 5\nloss = "mse"\n')
    assert resolve_stages(load_config(p), {})[0]["loss"] == "mse"
    with pytest.raises(ConfigError):
        load_config(tmp_path / "missing.toml")
    y = tmp_path / "c.yaml"
    y.write_text("model: rlfn\nstages:\n  - iters: 5\n    loss: charbonnier\n")
    try:
        import yaml  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="PyYAML"):
            load_config(y)
    else:
        assert resolve_stages(load_config(y), {})[0]["loss"] == "charbonnier"


def test_losses():
    a, b = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.5)
    assert pixel_loss("l1", a, b).item() == pytest.approx(0.5)
    assert pixel_loss("mse", a, b).item() == pytest.approx(0.25)
    assert pixel_loss("charbonnier", a, b).item() == pytest.approx(0.5, abs=1e-6)
    assert pixel_loss("charbonnier", a, a).item() == pytest.approx(1e-6)


# ----------------------------------------------------------------------------- data

@pytest.mark.shared
def test_pairs_are_matlab_bicubic_and_aligned(folders):
    train, _ = folders
    ds = PairedPatches(train, patch=64, scale=4, seed=3)
    files = sorted(train.glob("*.png"))
    for k in range(6):
        lr, hr = ds[k]
        assert lr.shape == (3, 16, 16) and hr.shape == (3, 64, 64) and lr.dtype == hr.dtype == torch.uint8
        lr2, hr2 = ds[k]
        assert torch.equal(lr, lr2) and torch.equal(hr, hr2)  # a pure function of the index
    # The cached LR is the protocol's LR of the whole image, and crops are aligned with HR:
    # find the HR crop in its image, under every flip/rotation, and check the LR crop.
    i = ds.image_index(0)
    hr_img = modcrop(read_rgb_uint8(files[[f.name for f in files].index(ds.names[i])]), 4)
    assert torch.equal(ds.lr[i], make_lr(hr_img, 4))
    lr, hr = ds[0]
    found = False
    for t in range(8):
        h, l_ = hr, lr
        if t & 4:
            h, l_ = h.transpose(-1, -2), l_.transpose(-1, -2)
        if t & 2:
            h, l_ = h.flip(-2), l_.flip(-2)
        if t & 1:
            h, l_ = h.flip(-1), l_.flip(-1)
        for y in range(0, hr_img.shape[1] - 63, 4):
            for x in range(0, hr_img.shape[2] - 63, 4):
                if torch.equal(hr_img[:, y:y + 64, x:x + 64], h):
                    found = found or torch.equal(ds.lr[i][:, y // 4:y // 4 + 16, x // 4:x // 4 + 16], l_)
    assert found
    # One epoch visits every image once.
    assert sorted(ds.image_index(k) for k in range(len(ds))) == list(range(len(ds)))


@pytest.mark.shared
def test_loader_workers_match_single_process(folders):
    train, _ = folders
    ds = PairedPatches(train, patch=32, scale=4, seed=1)
    a = make_loader(ds, 3, start_sample=6, num_workers=0, pin_memory=False)
    b = make_loader(ds, 3, start_sample=6, num_workers=2, pin_memory=False)
    for (la, ha), (lb, hb), _ in zip(a, b, range(3)):
        assert torch.equal(la, lb) and torch.equal(ha, hb)


# ----------------------------------------------------------------------------- training runs

@pytest.fixture(scope="module")
def scratch_run(folders, tmp_path_factory):
    """A short run from scratch through the CLI: IFADNet, 12 iterations, patch 64, batch 4."""
    from esr_models.cli import main

    train, val = folders
    out = tmp_path_factory.mktemp("run") / "ifadnet"
    rc = main(["train", "--model", "ifadnet", "--train-hr", str(train), "--val-hr", str(val),
               "--out", str(out), "--iters", "12", "--patch", "64", "--batch", "4", "--lr", "2e-3",
               "--val-every", "12", "--log-every", "1", "--num-workers", "0", "--no-progress"])
    assert rc == 0
    return out


@pytest.mark.shared
def test_scratch_run_learns(scratch_run):
    rows = _log(scratch_run)
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    vals = [(int(r["global_iter"]), float(r["val_psnr"])) for r in rows if r["val_psnr"]]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert vals[0][0] == 0 and vals[-1][0] == 12
    assert vals[-1][1] > vals[0][1] + 1.0  # dB, from a random init
    for r in rows:
        if r["loss"]:
            assert float(r["lr"]) == pytest.approx(2e-3) and float(r["it_per_s"]) > 0
    assert (scratch_run / "checkpoints" / "best.pth").is_file()
    ck = torch.load(scratch_run / "checkpoints" / "last.pth", weights_only=True)
    assert ck["global_iter"] == 12 and ck["iter"] == 12 and ck["sampler"]["next_sample"] == 48
    assert set(ck["rng"]) >= {"torch", "numpy", "python"}


@pytest.mark.shared
def test_ema_differs_and_is_exported(scratch_run, tmp_path):
    ckpt = scratch_run / "checkpoints" / "last.pth"
    ck = torch.load(ckpt, weights_only=True)
    diffs = [(ck["params_ema"][k] - v).abs().max().item() for k, v in ck["model"].items()
             if v.is_floating_point()]
    assert max(diffs) > 1e-4
    out = export_deploy_checkpoint(ckpt, tmp_path / "ifadnet_ema.pth")
    raw_out = export_deploy_checkpoint(ckpt, tmp_path / "ifadnet_raw.pth", use_ema=False)
    payload = torch.load(out, weights_only=True)
    assert set(payload) == {"params", "params_ema"}  # the upstream IFADNet file layout
    assert "fea_conv.weight" in payload["params_ema"] and "B2.c1_r.rbr_reparam.weight" in payload["params_ema"]
    ema_model = trainable(ckpt, use_ema=True).eval()
    raw_model = trainable(ckpt).eval()
    loaded, loaded_raw = esr_models.load(out), esr_models.load(raw_out)
    x = torch.rand(2, 3, 17, 21)
    with torch.no_grad():
        assert (loaded(x) - deploy(ema_model)(x)).abs().max() <= 1e-6
        assert (loaded(x) - ema_model(x)).abs().max() <= 1e-5
        assert (loaded_raw(x) - raw_model(x)).abs().max() <= 1e-5
        assert (loaded(x) - loaded_raw(x)).abs().max() > 1e-4  # EMA, not raw, by default
    with pytest.raises(FileExistsError):
        export_deploy_checkpoint(ckpt, out)
    export_deploy_checkpoint(ckpt, out, overwrite=True)
    assert not list(tmp_path.glob(".*.tmp"))
    from esr_kernels import available_backends

    if available_backends().get("cpu_extension"):
        fused = esr_models.load(out, fused=True, backend="cpu")
        with torch.no_grad():
            assert (fused(x) - loaded(x)).abs().max() <= 1e-4


def test_export_plain_layouts(tmp_path):
    """PFDNLite and RLFN exports are plain upstream-named state dicts that load and detect."""
    for name, key in (("pfdnlite", "block1.attn.body.0.weight"), ("rlfn", "block_1.c1_r.weight"),
                      ("span", "block_1.c1_r.eval_conv.weight")):
        model = trainable(name, pretrained=False)
        src = tmp_path / f"{name}_src.pth"
        dm = deploy(model)
        torch.save(dm.state_dict(), src)  # a deploy checkpoint in this package's layout
        out = export_deploy_checkpoint(src, tmp_path / f"{name}.pth")
        sd = torch.load(out, weights_only=True)
        assert key in sd and "params" not in sd
        x = torch.rand(1, 3, 16, 16)
        with torch.no_grad():
            assert (esr_models.load(out)(x) - dm(x)).abs().max() <= 1e-6


@pytest.mark.shared
def test_export_matches_upstream_files(tmp_path):
    """Exporting the upstream models (through trainable -> deploy) gives back the upstream
    files: the same keys, shapes and (merged from main branch + zero branches) values, so
    upstream code loads the exported files with strict=True."""
    from esr_models.arch import weights

    for name in ("ifadnet", "pfdnlite", "rlfn", "span", "spantiny"):
        upstream = torch.load(weights.resolve(name, allow_download=False), map_location="cpu", weights_only=True)
        src = tmp_path / f"{name}_deploy.pth"
        torch.save(deploy(trainable(name)).state_dict(), src)
        out = torch.load(export_deploy_checkpoint(src, tmp_path / f"{name}.pth"), weights_only=True)
        want = upstream["params_ema"] if name == "ifadnet" else upstream
        got = out["params_ema"] if name == "ifadnet" else out
        assert set(out) == set(upstream)
        assert got.keys() == want.keys()
        # Exact on any CPU: trainable() puts the deploy weights in the main branches and zeroes
        # the others, so deploy() adds exact zeros to them (in float64, then back to float32).
        for k, v in want.items():
            assert got[k].shape == v.shape and got[k].dtype == v.dtype and torch.equal(got[k], v), (name, k)


@pytest.mark.shared
def test_span_variant_run_and_export(folders, tmp_path):
    """esr train --model spantiny --init spantiny (a variant name: SPAN at 26 channels), one step
    with a SPAN teacher; its checkpoint exports to an upstream-layout deploy file that loads
    back as the trained model."""
    from esr_models.cli import main

    train, val = folders
    out = tmp_path / "spantiny"
    rc = main(["train", "--model", "spantiny", "--init", "spantiny", "--teacher", "span", "--train-hr", str(train),
               "--val-hr", str(val), "--out", str(out), "--iters", "1", "--patch", "32", "--batch", "2",
               "--val-every", "1", "--val-max-images", "1", "--num-workers", "0", "--no-progress"])
    assert rc == 0
    ckpt = out / "checkpoints" / "last.pth"
    ck = torch.load(ckpt, weights_only=True)
    assert ck["arch"]["name"] == "span" and ck["arch"]["channels"] == 26 and ck["global_iter"] == 1
    assert "blocks.0.convs.0.conv.1.weight" in ck["model"] and "head.sk.weight" in ck["model"]
    assert float([r for r in _log(out) if r["loss"]][0]["distill_loss"]) > 0
    dst = export_deploy_checkpoint(ckpt, tmp_path / "spantiny_deploy.pth", use_ema=False)
    sd = torch.load(dst, weights_only=True)
    assert "conv_1.eval_conv.weight" in sd and not any(".sk." in k for k in sd)
    model = trainable(ckpt).eval()
    # Image content: SPAN maps uniform noise far outside [0, 1], where float32 rounding of the
    # merged vs the branch form alone reaches 5e-4 (interop.onnx.image_like says more).
    from esr_models.interop.onnx import image_like

    x = image_like((1, 3, 17, 13), torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (esr_models.load(dst)(x) - model(x)).abs().max() <= 1e-5
    # --init of the other width is refused for the variant.
    rc = main(["train", "--model", "spantiny", "--init", "span", "--train-hr", str(train), "--val-hr", str(val),
               "--out", str(tmp_path / "wrong"), "--iters", "1", "--num-workers", "0", "--no-progress"])
    assert rc != 0


@pytest.mark.shared
def test_distillation(folders, tmp_path):
    train, val = folders
    opts = TrainOptions(model="pfdnlite", train_hr=train, val_hr=val, out=tmp_path / "kd",
                        overrides={"patch": 64, "batch": 2, "teacher": "rlfn", "num_workers": 0,
                                   "val_every": 100},
                        iters=2, progress=False, log_every=1, val_max_images=1)
    trainer = Trainer(opts)
    assert trainer.stages[0]["distill_weight"] == 1.0  # a teacher on the command line is used
    trainer.run()
    teacher = trainer._teachers["rlfn"].model
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    rows = [r for r in _log(tmp_path / "kd") if r["loss"]]
    for r in rows:
        assert float(r["distill_loss"]) > 0
        assert float(r["loss"]) == pytest.approx(float(r["pixel_loss"]) + float(r["distill_loss"]), rel=1e-5)


def _run(folders, out, resume=False, **kw):
    train, val = folders
    # A resumed run takes its stages from the checkpoint; --iters is only for a new run.
    opts = TrainOptions(model=None, config="pfdnlite-bsr", train_hr=train, val_hr=val, out=out,
                        overrides={"patch": 64, "batch": 2, "num_workers": 0, "val_every": 100},
                        iters=None if resume else 2, resume=resume, progress=False, log_every=1,
                        val_max_images=1, **kw)
    return Trainer(opts).run()


@pytest.fixture(scope="module")
def straight_run(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight") / "a"
    return _run(folders, out), out


@pytest.mark.shared
@pytest.mark.parametrize("stop_at,where", [(5, (2, 1)), (6, (3, 0))], ids=["mid-stage", "stage-boundary"])
def test_resume_is_exact(folders, straight_run, tmp_path, stop_at, where):
    """pfdnlite-bsr at 2 iterations a stage (8 in all, pruning before the 4th stage):
    N iterations, stop, --resume to the end == 8 straight, bit for bit (tolerance 0: the same
    CPU ops run in the same order, the data are a pure function of the sample index, and model,
    EMA, optimiser, scheduler and RNG states are restored). Stopping at 6 leaves a stage-boundary
    checkpoint, so the resumed run must do the pruning itself."""
    straight, a_dir = straight_run
    first = _run(folders, tmp_path / "b", stop_at=stop_at)
    assert first["stopped_at"] == stop_at
    ck = torch.load(tmp_path / "b" / "checkpoints" / "last.pth", weights_only=True)
    assert (ck["stage"], ck["iter"], ck["global_iter"]) == (*where, stop_at)
    resumed = _run(folders, tmp_path / "b", resume=True)
    assert straight["global_iter"] == resumed["global_iter"] == 8
    a = torch.load(a_dir / "checkpoints" / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "checkpoints" / "last.pth", weights_only=True)
    assert a["arch"]["block_kinds"] == [True, False, False, True]  # step 4 pruned blocks 2, 3
    for key in ("model", "params_ema"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for k in sa:
            assert torch.equal(sa[k], sb[k])
    assert a["scheduler"] == b["scheduler"]
    la = [(r["global_iter"], r["loss"]) for r in _log(a_dir) if r["loss"]]
    lb = [(r["global_iter"], r["loss"]) for r in _log(tmp_path / "b") if r["loss"]]
    assert la == lb
    with pytest.raises(FileExistsError):
        _run(folders, a_dir)  # an existing run is never overwritten without --resume


@pytest.mark.shared
def test_ctrl_c_saves_and_resumes_exactly(folders, straight_run, tmp_path, monkeypatch):
    """Ctrl-C during iteration 3: the iteration finishes, last.pth is written, run() reports
    the interruption; --resume then ends exactly where the straight run does."""
    import os
    import signal

    from esr_models.training import trainer as trainer_mod

    calls = {"n": 0}
    original = trainer_mod.EMA.update

    def update(self, model):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGINT)
        original(self, model)

    monkeypatch.setattr(trainer_mod.EMA, "update", update)
    first = _run(folders, tmp_path / "c")
    assert first["interrupted"] == 3
    monkeypatch.setattr(trainer_mod.EMA, "update", original)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    _run(folders, tmp_path / "c", resume=True)
    _, a_dir = straight_run
    a = torch.load(a_dir / "checkpoints" / "last.pth", weights_only=True)
    c = torch.load(tmp_path / "c" / "checkpoints" / "last.pth", weights_only=True)
    for key in ("model", "params_ema"):
        for k in a[key]:
            assert torch.equal(a[key][k], c[key][k]), (key, k)


def test_cli_usage_errors(tmp_path, capsys):
    from esr_models.cli import main

    assert main(["train", "--show-recipe", "pfdnlite-bsr"]) == 0
    assert "step4" in capsys.readouterr().out
    assert main(["train", "--model", "rlfn"]) == 2
    assert main(["train", "--model", "rlfn", "--train-hr", str(tmp_path), "--val-hr", str(tmp_path),
                 "--out", str(tmp_path / "o"), "--config", "no-such-recipe"]) == 2
