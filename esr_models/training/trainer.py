"""The ``esr train`` loop: staged recipes, losses, distillation, EMA, validation by the
challenge protocol, checkpoints that resume exactly, CSV log.

Files under ``out``:

* ``checkpoints/last.pth``: written at every validation, at the end of each stage, at
  ``stop_at`` and on Ctrl-C (after the iteration in progress); ``--resume`` continues from it.
* ``checkpoints/best.pth``: the checkpoint with the best validation PSNR so far.
* ``log.csv``: one row every ``log_every`` iterations (mean losses over the window) and one
  per validation.
* ``config.json``: the resolved stages of the run.

A checkpoint is a dict: ``arch`` (the train-time model's constructor config), ``model`` (raw
weights), ``params_ema`` (EMA weights, BasicSR's name; None without EMA), ``optimizer``,
``scheduler``, ``stage`` (index), ``iter`` (iterations done in that stage), ``global_iter``,
``ema_updates``, ``rng`` (torch, CUDA, numpy and Python states), ``sampler`` (the data stream's
seed and next sample index), ``best_psnr``, ``stages`` (resolved) and ``config``. It loads with
``torch.load(..., weights_only=True)``.
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import random
import signal
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from esr_kernels.errors import EsrError, InvalidValueError

from ..evaluation.protocol import evaluate_images, list_images, summarise
from ..infer.loading import load
from ..io.images import image_size
from .data import PairedPatches, make_loader
from .models import (TRAIN_MODEL_NAMES, VARIANT_CONFIGS, arch_name, deploy, from_training_checkpoint,
                     prune_pfdnlite, trainable)
from .recipes import ConfigError, check_arch, load_config, resolve_stages

LOG_FIELDS = ["global_iter", "stage", "stage_iter", "loss", "pixel_loss", "distill_loss", "lr",
              "val_psnr", "val_psnr_y", "it_per_s", "elapsed_s"]


@dataclass
class TrainOptions:
    """What ``esr train`` was asked to do. ``overrides`` are stage settings given as flags
    (``patch``, ``batch``, ``teacher``, ...; None = not given)."""

    model: str | None
    train_hr: str | Path
    val_hr: str | Path
    out: str | Path
    init: str | None = None
    config: str | None = None
    overrides: dict = field(default_factory=dict)
    iters: int | None = None
    iter_scale: float | None = None
    stages: list[int] | None = None  # 1-based indices of the recipe's stages to run
    resume: bool = False
    stop_at: int | None = None  # stop (resumably) once this many iterations are done in all
    overwrite: bool = False  # replace the files of another run in ``out`` (never asked by default)
    device: str | None = None
    progress: bool = True
    log_every: int = 100
    val_max_images: int | None = None


# ----------------------------------------------------------------------------- losses

def pixel_loss(kind: str, pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean L1, MSE or Charbonnier (sqrt(d^2 + eps^2)) over all elements; float32 scalar."""
    d = pred.float() - target.float()
    if kind == "l1":
        return d.abs().mean()
    if kind == "mse":
        return (d * d).mean()
    if kind == "charbonnier":
        return torch.sqrt(d * d + eps * eps).mean()
    raise ValueError(f"unknown loss {kind!r}")


class Teacher:
    """A frozen teacher: ``esr_models.load(spec)``, eval mode, no parameter requires grad, run
    under ``torch.no_grad`` so no graph is built through it."""

    def __init__(self, spec: str, device: torch.device):
        self.spec = spec
        self.model = load(spec, device=device).eval()
        self.model.requires_grad_(False)

    def __call__(self, lr: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(lr.float()).detach()


# ----------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a model's parameters and buffers (BasicSR's
    ``params_ema``). The decay ramps up as min(decay, (1 + n) / (10 + n)) over the first
    updates ``n``, so that short runs do not leave the average stuck at the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.is_floating_point():
                v.mul_(d).add_(src[k].detach(), alpha=1 - d)
            else:
                v.copy_(src[k])


# ----------------------------------------------------------------------------- RNG state

def rng_state() -> dict:
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_state[0], "key": torch.from_numpy(np_state[1].astype(np.int64)),
                  "pos": int(np_state[2]), "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss": py_state[2]},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def atomic_save(obj, path: Path) -> None:
    """torch.save through a temp file in the same folder and a rename: a crash never leaves a
    half-written checkpoint under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class ResumeError(EsrError, ValueError):
    """``--resume`` found a ``last.pth`` that is not a checkpoint of ``esr train``."""


_RESUME_KEYS = ("arch", "model", "config", "stages", "stage", "iter", "global_iter", "rng")


def read_resume_checkpoint(path: Path) -> dict:
    """``path`` (a run's ``last.pth``) as a dict, or ResumeError naming the file and the problem."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # random bytes, truncated zip, pickles of other objects
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ResumeError(f"--resume: {path} cannot be read as a PyTorch checkpoint "
                          f"({type(exc).__name__}: {first[:200]}); it is damaged or not a checkpoint") from None
    if not isinstance(state, dict):
        raise ResumeError(f"--resume: {path} holds a {type(state).__name__}, not a checkpoint of esr train")
    missing = [k for k in _RESUME_KEYS if k not in state]
    if missing:
        kind = "a deploy checkpoint (weights only)" if not ({"stage", "optimizer"} & set(state)) else \
            "an incomplete training checkpoint"
        raise ResumeError(f"--resume: {path} is {kind}, not a checkpoint of esr train: it lacks "
                          f"{', '.join(missing)}. To start from its weights, use --init {path} with a new --out")
    bad = [k for k, t in (("config", dict), ("stages", list), ("model", dict), ("arch", dict),
                          ("stage", int), ("iter", int), ("global_iter", int)) if not isinstance(state[k], t)]
    if bad:
        raise ResumeError(f"--resume: {path}: entries {', '.join(bad)} have the wrong type; the file is damaged")
    return state


# ----------------------------------------------------------------------------- trainer

def _make_optimizer(model: nn.Module, st: dict) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    cls = torch.optim.AdamW if st["optimizer"] == "adamw" else torch.optim.Adam
    return cls(params, lr=st["lr"], betas=tuple(st["betas"]), weight_decay=st["weight_decay"])


def validate(model: nn.Module, files: list[Path], device: torch.device, scale: int) -> dict:
    """Challenge protocol (bicubic LR, uint8 SR, RGB PSNR with a ``scale`` border) on ``files``
    with the deploy form of ``model``; returns {"psnr", "psnr_y", "images"}."""
    dm = deploy(model).to(device=device, dtype=torch.float32).eval()

    def upscale(x: torch.Tensor) -> torch.Tensor:
        return dm(x.to(device))

    records = [r for r in evaluate_images(files, upscale, scale=scale, with_ssim=False,
                                          min_size=getattr(dm, "min_size", 1)) if "error" not in r]
    if not records:
        return {"psnr": float("nan"), "psnr_y": float("nan"), "images": 0}
    return {**summarise(records), "images": len(records)}


@dataclass
class Stage:
    """One stage of a run while it trains: its resolved settings (``st``, the dict saved in
    checkpoints and config.json), where it sits in the run, and what trains it. ``it`` is the
    number of iterations done in the stage; this run stops the stage at ``end`` (its ``iters``,
    or earlier with ``stop_at``)."""

    index: int
    st: dict
    offset: int                        # iterations of the run before this stage
    model: nn.Module
    ema: EMA | None
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    it: int
    end: int
    teacher: Teacher | None = None
    data: PairedPatches | None = None

    @property
    def global_iter(self) -> int:
        return self.offset + self.it

    @property
    def at_end(self) -> bool:
        """All the stage's iterations are done (not only this run's share of them)."""
        return self.it == self.st["iters"]

    def val_model(self) -> nn.Module:
        return self.ema.model if self.ema is not None and self.st["val_use_ema"] else self.model

    def next_model(self) -> nn.Module:
        """What the next stage starts from: the averaged weights when there are some (they are
        the ones validated and exported), as a separate BasicSR run loading params_ema would."""
        return self.ema.model if self.ema else self.model

    def checkpoint(self) -> dict:
        """The state that resumes this stage at ``it`` (``Trainer._save`` adds the rest)."""
        ema = self.ema
        return dict(arch=self.model.arch_config, model=self.model.state_dict(),
                    params_ema=ema.model.state_dict() if ema else None,
                    optimizer=self.opt.state_dict(), scheduler=self.sched.state_dict(),
                    stage=self.index, iter=self.it, global_iter=self.global_iter,
                    ema_updates=ema.updates if ema else 0,
                    sampler={"seed": self.data.seed, "next_sample": self.it * self.st["batch"]})

    def boundary_checkpoint(self, state: dict) -> dict:
        """``state`` taken at the stage's end, turned into the start of the next stage: its
        weights, no optimiser state (the next stage starts fresh, pruning included)."""
        model = self.next_model()
        return {**state, "arch": model.arch_config, "model": model.state_dict(), "params_ema": None,
                "optimizer": None, "scheduler": None, "stage": self.index + 1, "iter": 0, "ema_updates": 0,
                "sampler": {"seed": None, "next_sample": 0}}


@dataclass
class _Window:
    """Losses summed over the iterations since the last log row, and when the window began
    (training steps only: validation and saving restart the clock)."""

    loss: float = 0.0
    pixel_loss: float = 0.0
    distill_loss: float = 0.0
    n: int = 0
    t0: float = field(default_factory=time.perf_counter)

    def add(self, loss: float, pixel_loss: float, distill_loss: float) -> None:
        self.loss += loss
        self.pixel_loss += pixel_loss
        self.distill_loss += distill_loss
        self.n += 1

    def reset(self) -> None:
        self.loss = self.pixel_loss = self.distill_loss = 0.0
        self.n = 0
        self.t0 = time.perf_counter()


class Trainer:
    """Runs ``TrainOptions``. ``run()`` returns a summary dict (final iteration, best and
    last validation PSNR, throughput)."""

    def __init__(self, opts: TrainOptions):
        self.opts = opts
        self.out = Path(opts.out)
        self.ckpt_dir = self.out / "checkpoints"
        if opts.device:
            self.device = torch.device(opts.device)
        else:
            self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.resume_state = None
        last = self.ckpt_dir / "last.pth"
        if self.out.exists() and not self.out.is_dir():
            raise FileExistsError(f"--out {self.out} exists and is not a folder")
        if opts.resume and opts.overwrite:
            raise InvalidValueError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
        if opts.resume:
            if not last.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {last}")
            self.resume_state = read_resume_checkpoint(last)
            self.cfg = self.resume_state["config"]
        else:
            held = self.run_files()
            if held and not opts.overwrite:
                raise FileExistsError(
                    f"{self.out} already holds a run ({', '.join(str(p) for p in held)}); pass --resume to "
                    "continue it, --overwrite to replace it, or choose another --out")
            self.cfg = load_config(opts.config) if opts.config else {}
        model_name = self.cfg.get("model") or opts.model
        if opts.model and self.cfg.get("model") and opts.model != self.cfg["model"]:
            raise InvalidValueError(f"--model {opts.model} but the config trains {self.cfg['model']}")
        if not model_name:
            raise InvalidValueError("no model: pass --model or a config that names one")
        self.model_name = str(model_name).lower()
        if self.model_name not in TRAIN_MODEL_NAMES:
            raise ConfigError(f"model {model_name!r}: expected one of {', '.join(TRAIN_MODEL_NAMES)}")
        # The architecture trained: the model name's own, or the one a variant belongs to
        # (spantiny: span, with VARIANT_CONFIGS' constructor arguments).
        self.arch_name = arch_name(self.model_name)
        if self.resume_state is None:
            check_arch(self.arch_name, self.cfg.get("arch", {}), str(opts.config or "config"))
        self.cfg = {**self.cfg, "model": self.model_name}
        if self.resume_state is not None:
            # The run's own resolved stages, so that a resumed run is the run that was started;
            # flags given again (e.g. --num-workers) still override settings.
            given = {k: v for k, v in opts.overrides.items() if v is not None}
            self.stages = [{**st, **given} for st in self.resume_state["stages"]]
            resolve_stages({"stages": self.stages}, {})  # validates the overrides
            if opts.iters is not None or opts.iter_scale is not None or opts.stages:
                warnings.warn("--iters/--iter-scale/--stages are fixed when a run starts; "
                              "ignored with --resume", stacklevel=2)
        else:
            self.stages = self._resolve(opts)
        self.val_files, _ = list_images(opts.val_hr)
        if opts.val_max_images:
            self.val_files = self.val_files[:opts.val_max_images]
        self._teachers: dict[str, Teacher] = {}
        self._base_data: PairedPatches | None = None

    def check_validation_images(self, model: nn.Module) -> None:
        """ConfigError unless at least one validation image can be used: readable, and large
        enough that its LR (HR / the model's scale) is at least the model's minimum input.
        Validation would otherwise give "nan dB on 0 images" every time and no best.pth."""
        scale, min_size = int(model.scale), int(getattr(model, "min_size", 1))
        reasons = []
        for path in self.val_files:
            size = image_size(path)
            if size is None:
                reasons.append(f"{path.name} (unreadable)")
                continue
            w, h = size
            lw, lh = w // scale, h // scale
            if lw >= min_size and lh >= min_size:
                return
            reasons.append(f"{path.name} ({w}x{h} makes a {lw}x{lh} LR at x{scale})")
        shown = "; ".join(reasons[:5]) + (f"; and {len(reasons) - 5} more" if len(reasons) > 5 else "")
        raise ConfigError(f"--val-hr {self.opts.val_hr}: none of its {len(self.val_files)} validation image(s) can be "
                          f"used (the model needs an LR of at least {min_size}x{min_size}, i.e. an HR of at "
                          f"least {min_size * scale}x{min_size * scale}): {shown}. Nothing was trained.")

    def run_files(self) -> list[Path]:
        """The files of a run that ``out`` already holds (a run writes exactly these)."""
        names = (self.out / "config.json", self.out / "log.csv", self.ckpt_dir / "best.pth", self.ckpt_dir / "last.pth")
        return [p for p in names if p.exists() or p.is_symlink()]

    def _resolve(self, opts: TrainOptions) -> list[dict]:
        stages = resolve_stages(self.cfg, opts.overrides, iter_scale=opts.iter_scale, iters=opts.iters)
        if opts.overrides.get("teacher") and opts.overrides.get("distill_weight") is None:
            # A teacher asked for on the command line is used: weight 1 where the config had 0.
            for st in stages:
                if st["distill_weight"] <= 0:
                    st["distill_weight"] = 1.0
        if opts.stages:
            bad = [i for i in opts.stages if not 1 <= i <= len(stages)]
            if bad:
                raise InvalidValueError(f"--stages {bad}: the config has stages 1..{len(stages)}")
            stages = [stages[i - 1] for i in opts.stages]
        return stages

    # -- helpers -------------------------------------------------------------

    def _initial_model(self) -> nn.Module:
        if self.opts.init:
            # An esr train checkpoint starts from its EMA weights (the validated, exported ones).
            model = trainable(self.opts.init, use_ema=True)
            if model.arch_config["name"] != self.arch_name:
                raise InvalidValueError(f"--init {self.opts.init} is a {model.arch_config['name']} model, "
                                        f"not {self.model_name}")
            variant = VARIANT_CONFIGS.get(self.model_name, {})
            differ = {k: model.arch_config.get(k) for k, v in variant.items() if model.arch_config.get(k) != v}
            if differ:
                raise InvalidValueError(f"--init {self.opts.init} is a {model.arch_config['name']} model with "
                                        f"{differ}, not {self.model_name} ({variant})")
            return model
        torch.manual_seed(self.stages[0]["seed"])
        return trainable(self.model_name, pretrained=False, **self.cfg.get("arch", {}))

    def _teacher(self, spec: str) -> Teacher | None:
        if not spec:
            return None
        if spec not in self._teachers:
            self._teachers[spec] = Teacher(spec, self.device)
        return self._teachers[spec]

    def _data(self, st: dict) -> PairedPatches:
        if self._base_data is None:
            # Decoded once for every stage, at the smallest patch any stage uses (an image is
            # left out only where it is smaller than the stage's patch).
            smallest = min(s["patch"] for s in self.stages)
            self._base_data = PairedPatches(self.opts.train_hr, smallest, scale=self._scale, seed=0)
        return self._base_data.with_patch(st["patch"]) if st["patch"] != self._base_data.patch else self._base_data

    def _prepare(self, model: nn.Module, st: dict) -> nn.Module:
        model = model.to(self.device)
        if self.device.type == "cuda" and st["channels_last"]:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _save(self, path: Path, **state) -> None:
        atomic_save({**state, "rng": rng_state(), "config": self.cfg,
                     "stages": self.stages, "format": "esr-train-1"}, path)

    def _log(self, row: dict) -> None:
        new = not self.log_path.exists()
        with open(self.log_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            if new:
                w.writeheader()
            w.writerow({k: row.get(k, "") for k in LOG_FIELDS})

    def _truncate_log(self, global_iter: int) -> None:
        """On resume: drop rows written after the checkpoint (they will be redone)."""
        if not self.log_path.exists():
            return
        with open(self.log_path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if int(r["global_iter"]) <= global_iter]
        with open(self.log_path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=LOG_FIELDS)
            w.writeheader()
            w.writerows(rows)

    # -- main loop -------------------------------------------------------------

    def run(self) -> dict:
        from tqdm import tqdm

        model = self._start_run()
        rs = self.resume_state
        start_stage, start_iter = (rs["stage"], rs["iter"]) if rs is not None else (0, 0)
        self._best = rs.get("best_psnr", -math.inf) if rs is not None else -math.inf
        self._offsets = np.cumsum([0] + [st["iters"] for st in self.stages]).tolist()
        self._summary = {"best_psnr": self._best, "val_history": [], "iters_run": 0, "train_time_s": 0.0}
        self._last_val = None
        self._bar = tqdm(total=self._offsets[-1], initial=self._offsets[start_stage] + start_iter,
                         disable=not self.opts.progress, dynamic_ncols=True, desc="train")
        stage = None
        previous_handler = self._install_sigint(self._bar)
        try:
            for si in range(start_stage, len(self.stages)):
                stage = self._start_stage(si, model, rs if si == start_stage else None, start_iter)
                if self._run_stage(stage):
                    break
                model = copy.deepcopy(stage.next_model()).train().requires_grad_(True)
        finally:
            self._bar.close()
            if previous_handler is not None:
                signal.signal(signal.SIGINT, previous_handler)
        return self._finish(stage, start_stage, start_iter)

    def _start_run(self) -> nn.Module:
        """The model to train, and the run's files: a run none of whose validation images can be
        used is refused before any file is written; a new run removes an old one's files
        (--overwrite), a resumed one drops the log rows written after its checkpoint."""
        rs = self.resume_state
        # The model first: its scale and minimum input decide which validation images can be used.
        model = from_training_checkpoint(rs) if rs is not None else self._initial_model()
        self._scale = model.scale
        self.check_validation_images(model)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / "log.csv"
        if rs is None:
            held = self.run_files()
            if held and not self.opts.overwrite:  # another run started in ``out`` since __init__
                raise FileExistsError(f"{self.out} already holds a run ({', '.join(map(str, held))})")
            for p in held:  # --overwrite: the old run's files go, so that none is mixed into this one
                p.unlink()
        _atomic_write_text(self.out / "config.json",
                           json.dumps({"config": self.cfg, "stages": self.stages}, indent=2))
        if rs is not None:
            self._truncate_log(rs["global_iter"])
        return model

    def _start_stage(self, si: int, model: nn.Module, resume: dict | None, resume_iter: int) -> Stage:
        """Stage ``si`` ready to train from ``model``; ``resume``: the checkpoint this run
        continues, when it was taken in this stage."""
        st = self.stages[si]
        # A checkpoint written at a stage boundary has no optimiser state: that stage starts
        # fresh (pruning included) from the checkpoint's weights.
        resuming_here = resume is not None and resume.get("optimizer") is not None
        if resume is not None:
            # First, so that everything after (pruning's module construction included) draws
            # from the stream the interrupted run would have continued.
            set_rng_state(resume["rng"])
        if not resuming_here and st["prune_blocks"]:
            if self.arch_name != "pfdnlite":
                raise InvalidValueError("prune_blocks applies to pfdnlite only")
            model = prune_pfdnlite(model.cpu(), st["prune_blocks"])
        model = self._prepare(model.train(), st)
        ema = EMA(model, st["ema_decay"]) if st["ema_decay"] > 0 else None
        opt = _make_optimizer(model, st)
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, st["milestones"], st["gamma"])
        it0 = 0
        if resuming_here:
            self._restore_optimisation(resume, ema, opt, sched)
            it0 = resume_iter
        end = st["iters"]
        if self.opts.stop_at is not None:
            end = min(end, max(it0, self.opts.stop_at - self._offsets[si]))
        stage = Stage(si, st, self._offsets[si], model, ema, opt, sched, it=it0, end=end)
        if self.resume_state is None and si == 0:
            # The starting point, to compare every later validation with.
            self._validate(stage)
            self._summary["start_psnr"] = self._last_val["psnr"]
        stage.teacher = self._teacher(st["teacher"]) if st["distill_weight"] > 0 else None
        if st["distill_weight"] > 0 and stage.teacher is None:
            raise InvalidValueError(f"stage {st['name']}: distill_weight > 0 needs a teacher (--teacher)")
        stage.data = self._data(st)
        stage.data.seed = st["seed"] * 1000 + si  # each stage its own crop stream
        return stage

    @staticmethod
    def _restore_optimisation(resume: dict, ema: EMA | None, opt, sched) -> None:
        if ema is not None and resume.get("params_ema") is not None:
            ema.model.load_state_dict(resume["params_ema"])
            ema.updates = resume.get("ema_updates", 0)
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])

    def _run_stage(self, stage: Stage) -> bool:
        """Train ``stage`` up to its ``end``, validating and saving on the way; True when the
        run stops here (Ctrl-C, ``stop_at``)."""
        st = stage.st
        loader = make_loader(stage.data, st["batch"], stage.it * st["batch"], st["num_workers"],
                             pin_memory=self.device.type == "cuda")
        fwd = torch.compile(stage.model) if st["compile"] else stage.model
        window = _Window()
        saved_at = stage.it
        batches = iter(loader)
        while stage.it < stage.end and not self._stop_requested:
            try:
                lr8, hr8 = next(batches)
            except Exception:
                # Ctrl-C also reaches the loader's worker processes, which then exit: the state
                # is still that of the last completed iteration.
                if not self._stop_requested:
                    raise
                break
            losses = self._step(stage, fwd, lr8, hr8)
            stage.it += 1
            self._record(stage, window, *losses)
            if self._checkpoint_due(stage):
                self._validate_and_save(stage)
                saved_at = stage.it
                window.t0 = time.perf_counter()  # throughput counts training steps only
        del batches, loader
        return self._end_stage(stage, saved_at)

    def _step(self, stage: Stage, fwd, lr8: torch.Tensor, hr8: torch.Tensor):
        """One optimisation step on a uint8 batch; (loss, pixel loss, distillation loss)."""
        st, device = stage.st, self.device
        lr_t = lr8.to(device, non_blocking=True).float().div_(255.0)
        hr_t = hr8.to(device, non_blocking=True).float().div_(255.0)
        if device.type == "cuda" and st["channels_last"]:
            lr_t = lr_t.contiguous(memory_format=torch.channels_last)
        use_amp = st["amp"] and device.type == "cuda"
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            sr = fwd(lr_t)
        loss_pix = pixel_loss(st["loss"], sr, hr_t, st["charbonnier_eps"])
        loss = loss_pix
        loss_kd = torch.zeros((), device=device)
        if stage.teacher is not None:
            loss_kd = st["distill_weight"] * pixel_loss(st["distill_loss"], sr, stage.teacher(lr_t))
            loss = loss + loss_kd
        stage.opt.zero_grad(set_to_none=True)
        loss.backward()
        if st["grad_clip"] > 0:
            torch.nn.utils.clip_grad_norm_(stage.model.parameters(), st["grad_clip"])
        stage.opt.step()
        stage.sched.step()
        if stage.ema is not None:
            stage.ema.update(stage.model)
        return loss, loss_pix, loss_kd

    def _record(self, stage: Stage, window: _Window, loss, loss_pix, loss_kd) -> None:
        """The iteration just done: the progress bar, and a log row when the window is full."""
        st, summary, g = stage.st, self._summary, stage.global_iter
        summary["iters_run"] += 1
        window.add(loss.item(), loss_pix.item(), float(loss_kd.item()))
        self._bar.update(1)
        lr_now = stage.opt.param_groups[0]["lr"]
        post = {"loss": f"{loss.item():.4g}", "lr": f"{lr_now:.3g}"}
        if self._last_val is not None:
            post["val"] = f"{self._last_val['psnr']:.3f}"
        self._bar.set_postfix(post, refresh=False)
        if window.n >= min(self.opts.log_every, st["val_every"]) or stage.it == stage.end:
            dt = time.perf_counter() - window.t0
            summary["train_time_s"] += dt
            n = window.n
            self._log({"global_iter": g, "stage": st["name"], "stage_iter": stage.it,
                       "loss": window.loss / n, "pixel_loss": window.pixel_loss / n,
                       "distill_loss": window.distill_loss / n, "lr": lr_now,
                       "it_per_s": n / dt if dt > 0 else "", "elapsed_s": summary["train_time_s"]})
            summary.setdefault("loss_history", []).append((g, window.loss / n))
            window.reset()

    def _at_validation(self, stage: Stage) -> bool:
        return stage.it % stage.st["val_every"] == 0 or stage.at_end

    def _checkpoint_due(self, stage: Stage) -> bool:
        """A validation is due, or the stage stops here short of its end (``stop_at``, Ctrl-C)."""
        stopping = (stage.it == stage.end and stage.it < stage.st["iters"]) or self._stop_requested
        return self._at_validation(stage) or stopping

    def _validate_and_save(self, stage: Stage) -> None:
        """Validate when due, then write ``best.pth`` (a better PSNR) and ``last.pth``; a
        checkpoint taken at a stage's end resumes into the next stage."""
        at_val = self._at_validation(stage)
        if at_val:
            self._validate(stage)
        state = stage.checkpoint()
        if at_val and self._last_val["psnr"] > self._best:
            self._best = self._last_val["psnr"]
            self._save(self.ckpt_dir / "best.pth", **state, best_psnr=self._best)
        if stage.at_end and stage.index + 1 < len(self.stages):
            state = stage.boundary_checkpoint(state)
        self._save(self.ckpt_dir / "last.pth", **state, best_psnr=self._best)

    def _end_stage(self, stage: Stage, saved_at: int) -> bool:
        """After the stage's loop: True (and the summary says why) when the run stops here."""
        g = stage.global_iter
        if self._stop_requested:
            # Ctrl-C may land after the in-loop save decision: the state is that of the last
            # completed iteration either way, so write it if it is not yet written.
            if saved_at != stage.it:
                self._save(self.ckpt_dir / "last.pth", **stage.checkpoint(), best_psnr=self._best)
            self._summary["interrupted"] = g
            self._bar.write(f"interrupted: saved {self.ckpt_dir / 'last.pth'} at iteration {g}; --resume continues")
            return True
        if self.opts.stop_at is not None and g >= self.opts.stop_at and stage.it < stage.st["iters"]:
            self._summary["stopped_at"] = g
            return True
        return False

    def _finish(self, stage: Stage | None, start_stage: int, start_iter: int) -> dict:
        summary = self._summary
        summary["best_psnr"] = self._best
        summary["last_psnr"] = self._last_val["psnr"] if self._last_val else None
        si, it = (stage.index, stage.it) if stage is not None else (start_stage, start_iter)
        summary["global_iter"] = self._offsets[min(si, len(self.stages))] + it
        if summary["train_time_s"] > 0:
            summary["it_per_s"] = summary["iters_run"] / summary["train_time_s"]
        return summary

    def _install_sigint(self, bar):
        """First Ctrl-C: finish the current iteration, write ``last.pth`` and stop (a later
        ``--resume`` continues exactly). Second Ctrl-C: abort at once, without saving. Only in
        the main thread (signal handlers cannot be set elsewhere); returns the old handler."""
        self._stop_requested = False
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True
            bar.write("stopping after this iteration (Ctrl-C again aborts without saving)")

        return signal.signal(signal.SIGINT, handler)

    def _validate(self, stage: Stage) -> None:
        """Validate ``stage``'s model (its EMA with ``val_use_ema``) at its ``it``: a log row,
        a line above the bar, the summary's history and ``_last_val``."""
        st, g = stage.st, stage.global_iter
        res = validate(stage.val_model(), self.val_files, self.device, self._scale)
        self._log({"global_iter": g, "stage": st["name"], "stage_iter": stage.it,
                   "val_psnr": res["psnr"], "val_psnr_y": res["psnr_y"]})
        self._bar.write(f"[{st['name']}] iter {g}: val PSNR {res['psnr']:.3f} dB "
                        f"(Y {res['psnr_y']:.3f}) on {res['images']} image(s)")
        self._summary["val_history"].append((g, res["psnr"]))
        self._last_val = res

def train(opts: TrainOptions) -> dict:
    """Run training; see ``Trainer``."""
    return Trainer(opts).run()
