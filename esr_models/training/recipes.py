"""Training configuration: built-in defaults, the shipped recipes and config files.

A config (TOML, or YAML when PyYAML is installed) has the same shape as a shipped recipe:

    model = "ifadnet"          # architecture trained
    [arch]                     # constructor overrides for a model built from scratch
    [defaults]                 # settings shared by every stage
    [[stages]]                 # one table per stage, run in order; its keys override [defaults]

Stage settings (``DEFAULTS`` lists them all with their default values): ``iters``, ``patch``
(HR patch side), ``batch``, ``loss`` (l1 | mse | charbonnier), ``charbonnier_eps``,
``teacher`` (anything ``esr_models.load`` accepts; "" = none), ``distill_loss`` (l1 | mse),
``distill_weight``, ``optimizer`` (adam | adamw), ``lr``, ``betas``, ``weight_decay``,
``milestones`` (iterations within the stage at which the LR is multiplied by ``gamma``),
``grad_clip`` (max global grad norm, 0 = off), ``ema_decay`` (0 = no EMA), ``val_every``,
``val_use_ema``, ``num_workers``, ``seed``, ``compile``, ``amp`` (bf16 autocast on CUDA),
``channels_last``, ``prune_blocks`` (PFDNLite: 0-based blocks turned into pruned blocks,
initialised from the full ones, when the stage starts).

The recipes are kept as TOML text inside this module so they ship with the package whatever
the packaging does with data files; ``esr train --show-recipe NAME`` prints one.
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path

from esr_kernels.errors import EsrError

from .models import TRAIN_CLASSES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, from PyPI (setup.py asks for it)
    import tomli as tomllib

DEFAULTS: dict = {
    "name": "",
    "iters": 1000,
    "patch": 128,
    "batch": 16,
    "loss": "l1",
    "charbonnier_eps": 1e-6,
    "teacher": "",
    "distill_loss": "l1",
    "distill_weight": 0.0,
    "optimizer": "adam",
    "lr": 2e-4,
    "betas": [0.9, 0.99],
    "weight_decay": 0.0,
    "milestones": [],
    "gamma": 0.5,
    "grad_clip": 0.0,
    "ema_decay": 0.999,
    "val_every": 500,
    "val_use_ema": True,
    "num_workers": 4,
    "seed": 0,
    "compile": False,
    "amp": True,
    "channels_last": True,
    "prune_blocks": [],
}

RECIPES: dict[str, str] = {
    "ifadnet-ecnu": '''\
# IFADNet, team ECNU_MViC (NTIRE 2024 ESR factsheet, "Training Strategy").
# Factsheet data: DIV2K + first 10K LSDIR images; flips and 90-degree rotations.
# The factsheet's teacher is SAFMN-large, which esr_models cannot load; the recipe uses the
# strongest model this package has, RLFN. Pass --teacher to use another (any esr_models.load
# name or checkpoint). The distillation weight is not in the factsheet: 1.0 (our choice).
model = "ifadnet"

[defaults]
optimizer = "adam"
betas = [0.9, 0.99]
lr = 2e-3
gamma = 0.5
milestones = [100000, 500000, 800000, 900000, 950000]
iters = 1000000
batch = 64
teacher = "rlfn"
distill_loss = "l1"
distill_weight = 1.0
ema_decay = 0.999
val_every = 5000

# Step 1: from scratch, patch 256, L1 + L1 distillation.
[[stages]]
name = "scratch"
patch = 256
loss = "l1"

# Step 2: fine-tune with larger patches and MSE; "other settings are the same".
[[stages]]
name = "large-patch-mse"
patch = 640
loss = "mse"
''',
    "pfdnlite-bsr": '''\
# PFDNLite, team BSR (NTIRE 2024 ESR factsheet, "Training details"); data DIV2K + LSDIR.
# Stage I (steps 1-3) trains four full PFDBLite blocks; step 4 turns blocks 2 and 3 into
# pruned blocks initialised from the full ones (esr_models.training.prune_pfdnlite says which
# weights map to which). LR halved every 100k of each step's 500k iterations. The factsheet
# gives no weight decay or betas for AdamW: ours are 1e-4 and (0.9, 0.99).
model = "pfdnlite"

[arch]
block_kinds = [true, true, true, true]

[defaults]
optimizer = "adamw"
betas = [0.9, 0.99]
weight_decay = 1e-4
gamma = 0.5
milestones = [100000, 200000, 300000, 400000]
iters = 500000
ema_decay = 0.999
val_every = 5000

[[stages]]
name = "step1-l1"
patch = 256
batch = 96
loss = "l1"
lr = 5e-4

[[stages]]
name = "step2-charbonnier"
patch = 256
batch = 96
loss = "charbonnier"
lr = 3e-4

[[stages]]
name = "step3-mse-480"
patch = 480
batch = 64
loss = "mse"
lr = 1e-4

[[stages]]
name = "step4-pruned-mse"
patch = 480
batch = 64
loss = "mse"
lr = 1e-4
prune_blocks = [1, 2]
''',
}


class ConfigError(EsrError, ValueError):
    """A config file or recipe that cannot be used."""


def parse_config_text(text: str, fmt: str = "toml", origin: str = "config") -> dict:
    if fmt == "toml":
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{origin}: invalid TOML: {exc}") from None
    try:
        import yaml
    except ImportError:
        raise ConfigError(f"{origin}: YAML configs need PyYAML (pip install pyyaml); "
                          "or write the config as TOML") from None
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: the YAML document is not a mapping")
    return data


# The top level of a config: ``model`` and ``recipe`` (set by load_config for a shipped recipe)
# are strings, the rest tables; anything else is a typo, never silently ignored.
TOP_LEVEL = {"model": str, "recipe": str, "arch": dict, "defaults": dict, "stages": list}


def _unknown(names, known, what: str) -> str:
    """'unknown <what> 'x' (did you mean 'y'?), ...; known: ...'"""
    parts = []
    for name in sorted(map(str, names)):
        close = difflib.get_close_matches(name, [str(k) for k in known], n=1)
        parts.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    return f"unknown {what} {', '.join(parts)}; known: {', '.join(sorted(map(str, known)))}"


def check_config(cfg: dict, origin: str = "config") -> dict:
    """Every table and key of ``cfg`` is one this package reads (ConfigError naming the first
    that is not: ``[defualts]``, ``[[stage]]``, a misspelt setting); returns ``cfg``."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{origin}: not a table of settings")
    unknown = set(cfg) - set(TOP_LEVEL)
    if unknown:
        raise ConfigError(f"{origin}: {_unknown(unknown, TOP_LEVEL, 'top-level table or key')}")
    for key, kind in TOP_LEVEL.items():
        if key in cfg and not isinstance(cfg[key], kind):
            what = {str: "a string", dict: "a table", list: "an array of tables ([[stages]])"}[kind]
            raise ConfigError(f"{origin}: {key!r} must be {what}, not {type(cfg[key]).__name__}")
    unknown = set(cfg.get("defaults", {})) - set(DEFAULTS)
    if unknown:
        raise ConfigError(f"{origin}: [defaults]: {_unknown(unknown, DEFAULTS, 'setting')}")
    for i, st in enumerate(cfg.get("stages", []), 1):
        if not isinstance(st, dict):
            raise ConfigError(f"{origin}: stage {i} is a {type(st).__name__}, not a table ([[stages]])")
        unknown = set(st) - set(DEFAULTS)
        if unknown:
            raise ConfigError(f"{origin}: [[stages]] {i}: {_unknown(unknown, DEFAULTS, 'setting')}")
    return cfg


def check_arch(model: str, arch: dict, origin: str = "config") -> None:
    """``[arch]`` keys are constructor arguments of ``model``'s train-time class."""
    import inspect

    if model not in TRAIN_CLASSES or not arch:
        return
    known = [n for n in inspect.signature(TRAIN_CLASSES[model]).parameters if n != "self"]
    unknown = set(arch) - set(known)
    if unknown:
        raise ConfigError(f"{origin}: [arch] of {model}: {_unknown(unknown, known, 'key')}")


def load_config(name_or_path: str | Path) -> dict:
    """A shipped recipe by name, or a .toml / .yaml / .yml file; checked by ``check_config``."""
    key = str(name_or_path)
    if key in RECIPES:
        cfg = parse_config_text(RECIPES[key], origin=f"recipe {key}")
        cfg.setdefault("recipe", key)
        return check_config(cfg, f"recipe {key}")
    path = Path(name_or_path)
    if not path.is_file():
        raise ConfigError(f"--config {key!r}: neither a shipped recipe ({', '.join(RECIPES)}) nor a file")
    fmt = "yaml" if path.suffix.lower() in (".yaml", ".yml") else "toml"
    cfg = parse_config_text(path.read_text(), fmt, origin=str(path))
    return check_config(cfg, str(path))


def resolve_stages(cfg: dict | None, overrides: dict, iter_scale: float | None = None,
                   iters: int | None = None) -> list[dict]:
    """The list of fully specified stage dicts: DEFAULTS <- cfg[defaults] <- stage <- overrides.

    ``iter_scale`` multiplies each stage's iterations and LR milestones (e.g. 0.001 to run a
    recipe briefly on a CPU); ``iters`` sets each stage's iterations, milestones scaled in
    proportion. Unknown keys are an error (a typo must not silently fall back to a default).
    """
    cfg = cfg or {}
    base = {**copy.deepcopy(DEFAULTS), **cfg.get("defaults", {})}
    stages = cfg.get("stages") or [{}]
    out = []
    for i, st in enumerate(stages):
        merged = {**base, **st}
        unknown = sorted(set(merged) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"stage {i + 1}: unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
        merged["name"] = merged["name"] or f"stage{i + 1}"
        factor = None
        if iters is not None:
            factor = iters / merged["iters"]
        elif iter_scale is not None:
            factor = iter_scale
        if factor is not None:
            merged["milestones"] = sorted({max(1, round(m * factor)) for m in merged["milestones"]})
            merged["iters"] = max(1, round(merged["iters"] * factor))
            # Scaled too, but a short run validates at most about 10 times per stage.
            scaled = max(1, round(merged["val_every"] * factor), merged["iters"] // 10)
            merged["val_every"] = min(merged["val_every"], scaled)
        # Flags last: an explicit --val-every or --patch is taken as given, never scaled.
        given = {k: v for k, v in overrides.items() if v is not None}
        unknown = sorted(set(given) - set(DEFAULTS))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; known: {sorted(DEFAULTS)}")
        merged.update(given)
        for key in ("iters", "patch", "batch", "val_every"):
            if int(merged[key]) < 1:
                raise ConfigError(f"stage {merged['name']}: {key} must be >= 1, got {merged[key]}")
        if merged["loss"] not in ("l1", "mse", "charbonnier"):
            raise ConfigError(f"stage {merged['name']}: loss {merged['loss']!r} is not l1, mse or charbonnier")
        if merged["distill_loss"] not in ("l1", "mse"):
            raise ConfigError(f"stage {merged['name']}: distill_loss must be l1 or mse")
        if merged["optimizer"] not in ("adam", "adamw"):
            raise ConfigError(f"stage {merged['name']}: optimizer must be adam or adamw")
        out.append(merged)
    return out
