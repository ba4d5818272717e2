"""``esr train``: registered into the ``esr`` command by ``add_parser``.

    esr train --model NAME --train-hr DIR --val-hr DIR --out DIR [--init NAME_OR_CKPT]
              [--config FILE|RECIPE] [--teacher NAME_OR_CKPT] [--iters N | --iter-scale F]
              [--patch P] [--batch B] [--lr LR] [--stages 1,2] [--resume] [--stop-at N] ...
    esr train --show-recipe NAME     # print a shipped recipe (TOML) and exit

Exit codes: 0 done (or stopped at --stop-at); 2 a usage or setup error found before training
started (bad options, missing folders, unknown recipe, existing run without --resume).
"""
from __future__ import annotations

import argparse
import os
import sys

from ..infer.loading import MODEL_NAMES
from ..training.recipes import RECIPES, ConfigError
from .common import check_device


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def cmd_train(args) -> int:
    from ..training.trainer import TrainOptions, Trainer  # here: every `esr` run imports this module, few train

    if args.show_recipe:
        if args.show_recipe not in RECIPES:
            print(f"error: no recipe {args.show_recipe!r}; shipped: {', '.join(RECIPES)}", file=sys.stderr)
            return 2
        print(RECIPES[args.show_recipe], end="")
        return 0
    missing = [f"--{n.replace('_', '-')}" for n in ("train_hr", "val_hr", "out") if not getattr(args, n)]
    if missing:
        print(f"error: esr train needs {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.iters is not None and args.iter_scale is not None:
        print("error: give --iters or --iter-scale, not both", file=sys.stderr)
        return 2
    if args.device:
        check_device(args.device)  # a UsageError before anything is read
    overrides = {"patch": args.patch, "batch": args.batch, "teacher": args.teacher, "lr": args.lr, "loss": args.loss, "ema_decay": args.ema_decay,
                 "num_workers": args.num_workers, "val_every": args.val_every, "seed": args.seed,
                 "compile": True if args.compile else None,
                 "distill_weight": args.distill_weight}
    opts = TrainOptions(model=args.model, train_hr=args.train_hr, val_hr=args.val_hr, out=args.out,
                        init=args.init, config=args.config, overrides=overrides, iters=args.iters,
                        iter_scale=args.iter_scale, stages=args.stages, resume=args.resume,
                        stop_at=args.stop_at, overwrite=args.overwrite, device=args.device, progress=not args.no_progress,
                        log_every=args.log_every, val_max_images=args.val_max_images)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.deterministic:
        # On CPU a run and its --resume are bit-exact already; on CUDA, cuDNN's autotuned and
        # atomics-based kernels are not, unless restricted to deterministic ones.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        trainer = Trainer(opts)
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        summary = trainer.run()
    except ConfigError as exc:  # refused before training (e.g. no usable validation image)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "interrupted" in summary:
        return 130
    parts = [f"done: iteration {summary['global_iter']}"]
    if summary.get("start_psnr") is not None:
        parts.append(f"val PSNR at start {summary['start_psnr']:.3f} dB")
    if summary.get("last_psnr") is not None:
        parts.append(f"last {summary['last_psnr']:.3f} dB")
    if summary.get("best_psnr", float("-inf")) > float("-inf"):
        parts.append(f"best after training began {summary['best_psnr']:.3f} dB")
    if summary.get("it_per_s"):
        parts.append(f"{summary['it_per_s']:.3f} it/s")
    print(", ".join(parts), file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    """Add the ``train`` subcommand to the ``esr`` argparse subparsers ``sub``."""
    p = sub.add_parser("train", help="train or fine-tune a model (staged recipes, EMA, resume)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=MODEL_NAMES, help="architecture (or taken from --config)")
    p.add_argument("--init", help="start from these weights: a model name (upstream checkpoint), a deploy "
                                  "checkpoint, or an esr train checkpoint; default: from scratch")
    p.add_argument("--train-hr", help="folder of HR training images (LR made by MATLAB bicubic)")
    p.add_argument("--val-hr", help="folder of HR validation images (challenge protocol PSNR)")
    p.add_argument("--out", help="run folder: checkpoints/, log.csv, config.json")
    p.add_argument("--config", help=f"TOML/YAML config file or a shipped recipe: {', '.join(RECIPES)}")
    p.add_argument("--show-recipe", metavar="NAME", help="print a shipped recipe and exit")
    p.add_argument("--teacher", help="distillation teacher: anything esr_models.load accepts")
    p.add_argument("--distill-weight", type=float, help="weight of the distillation loss")
    p.add_argument("--iters", type=int, help="iterations of each stage (LR milestones scaled to match)")
    p.add_argument("--iter-scale", type=float, help="multiply each stage's iterations and milestones")
    p.add_argument("--patch", type=int, help="HR patch size (all stages)")
    p.add_argument("--batch", type=int, help="batch size (all stages)")
    p.add_argument("--lr", type=float, help="initial learning rate (all stages)")
    p.add_argument("--loss", choices=("l1", "mse", "charbonnier"), help="pixel loss (all stages)")
    p.add_argument("--ema-decay", type=float, help="EMA decay (0: no EMA)")
    p.add_argument("--stages", type=_int_list, help="run only these stages of the config (1-based, e.g. 4)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run that --out holds (its config.json, log.csv, checkpoints/best.pth "
                        "and last.pth); without it, or --resume, a folder holding a run is refused")
    p.add_argument("--stop-at", type=int, help="stop after this many iterations in all (resumable)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--num-workers", type=int, help="data loader worker processes")
    p.add_argument("--val-every", type=int, help="validate and checkpoint every N iterations")
    p.add_argument("--val-max-images", type=int, help="validate on the first N images only")
    p.add_argument("--log-every", type=int, default=100, help="CSV row every N iterations")
    p.add_argument("--threads", type=int, help="CPU intra-op threads (torch.set_num_threads)")
    p.add_argument("--deterministic", action="store_true",
                   help="deterministic CUDA kernels, so that --resume is bit-exact on GPU too (slower)")
    p.add_argument("--seed", type=int)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)
