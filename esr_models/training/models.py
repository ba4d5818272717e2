"""Train-time networks, ``trainable`` (checkpoint or name -> train-time model) and ``deploy``
(train-time model -> the deploy-form reference model that ``esr_models.load`` returns).

The train-time models are the deploy classes with the re-parameterisable convs swapped in, so
their forward code is the reference's own:

* IFADNet: the three 3x3 convs of each RFMB (``blocks[i].convs``) are ``EdgeRepConv``.
* PFDNLite: each block's ``conv1`` (and ``conv2`` in full blocks) is a ``RepMBConv`` and its
  ``conv3`` a ``RepPointwiseConv``.
* RLFN: the deploy network unchanged (it has no re-parameterisation).
* SPAN: the head (``head``, upstream's conv_1), the body tail (``body_tail``, conv_2) and the
  three convs of each SPAB (``blocks[i].convs``) are upstream's train-time ``Conv3XC``.

Every model carries ``arch_config``: ``{"name": ..., **constructor kwargs}``, enough to rebuild
it from a training checkpoint; ``name`` is the architecture's. Model names that are variants of
an architecture (``spantiny``: SPAN with 26 channels) train that architecture with their
constructor arguments (``VARIANT_CONFIGS``).
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from esr_kernels.errors import InvalidValueError

from ..arch.checkpoints import CheckpointError, load_state_dict_file
from ..arch.ifadnet import IFADNet, RFMB
from ..arch.pfdnlite import PartialBlock, PFDNLite
from ..arch.registry import ARCHITECTURES, architecture, architecture_of, detect
from ..arch.rlfn import RLFN
from ..arch.span import DIV2K_MEAN, PIXEL_RANGE, SPAN
from ..infer.loading import load
from .reparam import REP_BLOCKS, AffineInputConv3XC, Conv3XC, EdgeRepConv, RepMBConv, RepPointwiseConv

# Architecture names (TRAIN_CLASSES' keys, ``arch_config["name"]``) and every model name that can
# be trained: the architectures' own and their variants' (``spantiny``).
ARCH_NAMES = tuple(arch.name for arch in ARCHITECTURES)
TRAIN_MODEL_NAMES = tuple(n for arch in ARCHITECTURES for n in arch.model_names)
# Constructor arguments of a variant model name trained from scratch (those of its upstream
# checkpoint; tests/models/test_reparam.py checks them against the checkpoint).
VARIANT_CONFIGS = {"spantiny": {"channels": 26}}


def arch_name(model_name: str) -> str:
    """The architecture a model name trains (``spantiny`` -> ``span``); KeyError if unknown."""
    return architecture(model_name).name


class TrainIFADNet(IFADNet):
    """IFADNet with edge-oriented re-parameterisable convs in its RFMBs. Same contract as
    ``IFADNet``: (N, 3, H, W) float in [0, 1] -> (N, 3, 4H, 4W)."""

    def __init__(self, channels: int = 36, num_blocks: int = 6, esa_channels: int = 16,
                 scale: int = 4, in_channels: int = 3, expand_ratio: int = 2):
        super().__init__(channels, num_blocks, esa_channels, scale, in_channels)
        self.arch_config = dict(name="ifadnet", channels=channels, num_blocks=num_blocks,
                                esa_channels=esa_channels, scale=scale, in_channels=in_channels,
                                expand_ratio=expand_ratio)
        for block in self.blocks:
            if isinstance(block, RFMB):
                block.convs = nn.ModuleList(EdgeRepConv(channels, expand_ratio) for _ in block.convs)


def _rep_partial_block(block: PartialBlock, channels: int, expand_ratio: int) -> None:
    s = block.split
    block.conv1 = RepMBConv(channels, channels if block.full else s, expand_ratio)
    block.conv2 = RepMBConv(s, s, expand_ratio) if block.full else None
    block.conv3 = RepPointwiseConv(channels)


class TrainPFDNLite(PFDNLite):
    """PFDNLite with RepMBConv / RepPointwiseConv convs. ``block_kinds``: True = full
    PFDBLite block, False = pruned. Same contract as ``PFDNLite``."""

    def __init__(self, channels: int = 48, block_kinds: tuple[bool, ...] = (True, False, False, True),
                 split: int = 24, attn_channels: int = 16, scale: int = 4, in_channels: int = 3,
                 expand_ratio: int = 2):
        block_kinds = tuple(bool(k) for k in block_kinds)
        super().__init__(channels, block_kinds, split, attn_channels, scale, in_channels)
        self.expand_ratio = expand_ratio
        self.arch_config = dict(name="pfdnlite", channels=channels, block_kinds=list(block_kinds),
                                split=split, attn_channels=attn_channels, scale=scale,
                                in_channels=in_channels, expand_ratio=expand_ratio)
        for block in self.blocks:
            _rep_partial_block(block, channels, expand_ratio)


class TrainRLFN(RLFN):
    """RLFN as deployed (no re-parameterisation); only adds ``arch_config``."""

    def __init__(self, channels: int = 46, mid_channels: int = 48, num_blocks: int = 4,
                 esa_channels: int = 16, scale: int = 4, in_channels: int = 3):
        super().__init__(channels, mid_channels, num_blocks, esa_channels, scale, in_channels)
        self.arch_config = dict(name="rlfn", channels=channels, mid_channels=mid_channels,
                                num_blocks=num_blocks, esa_channels=esa_channels, scale=scale,
                                in_channels=in_channels)


class TrainSPAN(SPAN):
    """SPAN with upstream's train-time ``Conv3XC`` (gain ``gain``) as its head, body tail and
    SPAB convs; its forward is upstream's train-time forward (the Conv3XC branches, not the
    merged convs). Same contract as ``SPAN``."""

    def __init__(self, channels: int = 28, num_blocks: int = 6, scale: int = 4, in_channels: int = 3,
                 norm: bool = True, gain: int = 2):
        super().__init__(channels, num_blocks, scale, in_channels, norm)
        self.arch_config = dict(name="span", channels=channels, num_blocks=num_blocks, scale=scale,
                                in_channels=in_channels, norm=norm, gain=gain)
        if norm:
            self.head = AffineInputConv3XC(in_channels, channels, gain, in_scale=PIXEL_RANGE, in_shift=DIV2K_MEAN)
        else:
            self.head = AffineInputConv3XC(in_channels, channels, gain)
        for block in self.blocks:
            block.convs = nn.ModuleList(Conv3XC(channels, channels, gain) for _ in block.convs)
        self.body_tail = Conv3XC(channels, channels, gain)


TRAIN_CLASSES = {"ifadnet": TrainIFADNet, "pfdnlite": TrainPFDNLite, "rlfn": TrainRLFN, "span": TrainSPAN}
assert set(TRAIN_CLASSES) == set(ARCH_NAMES), "every architecture needs its train-time class"


def build(arch_config: dict) -> nn.Module:
    """Fresh (randomly initialised) train-time model from an ``arch_config`` dict."""
    cfg = dict(arch_config)
    name = cfg.pop("name")
    if name not in TRAIN_CLASSES:
        raise InvalidValueError(f"unknown architecture {name!r}; expected one of {list(TRAIN_CLASSES)}")
    return TRAIN_CLASSES[name](**cfg)


def _deploy_config(name: str, model: nn.Module) -> dict:
    """``arch_config`` of a deploy reference model (as ``esr_models.load`` returns): the
    hyper-parameters its architecture record reads from its weights."""
    return dict(name=name, **architecture(name).hyperparameters(model.state_dict()))


def _arch_name(model: nn.Module) -> str:
    arch = architecture_of(model)
    if arch is None:
        raise TypeError(f"not an esr_models network: {type(model).__name__}")
    return arch.name


@torch.no_grad()
def from_deploy(deploy_model: nn.Module) -> nn.Module:
    """Train-time model whose main 3x3 branches hold the deploy model's weights and whose other
    branches output exactly zero: before any step it computes the deploy model's function."""
    name = _arch_name(deploy_model)
    model = build(_deploy_config(name, deploy_model))
    deploy_sd = deploy_model.state_dict()
    rep_prefixes = {n for n, m in model.named_modules() if isinstance(m, REP_BLOCKS)}
    plain = {k: v for k, v in deploy_sd.items() if k.rsplit(".", 1)[0] not in rep_prefixes}
    missing, unexpected = model.load_state_dict(plain, strict=False)
    assert not unexpected, unexpected
    for prefix in rep_prefixes:
        model.get_submodule(prefix).load_deploy_(deploy_sd[f"{prefix}.weight"], deploy_sd[f"{prefix}.bias"])
    # Every parameter outside the re-parameterisable blocks must have come from the deploy model.
    still_missing = [k for k in missing if not any(k.startswith(p + ".") for p in rep_prefixes)]
    assert not still_missing, still_missing
    return model.to(deploy_model.head.weight.device)


def _is_training_checkpoint(state: dict) -> bool:
    return isinstance(state, dict) and "arch" in state and "model" in state


def from_training_checkpoint(state: dict, use_ema: bool = False) -> nn.Module:
    """Train-time model from a checkpoint ``esr train`` wrote (raw weights, or EMA ones)."""
    model = build(state["arch"])
    key = "params_ema" if use_ema and state.get("params_ema") is not None else "model"
    model.load_state_dict(state[key], strict=True)
    return model


def trainable(name_or_checkpoint, pretrained: bool = True, use_ema: bool = False, **arch) -> nn.Module:
    """Train-time model, in train mode, float32 on the CPU.

    ``name_or_checkpoint`` is one of:

    * a model name (``TRAIN_MODEL_NAMES``: ``ifadnet``, ``pfdnlite``, ``rlfn``, ``span``,
      ``spantiny``): with ``pretrained=True`` the upstream checkpoint (found as
      ``esr_models.load`` finds it) is loaded as below; with ``pretrained=False`` a freshly
      initialised network of its architecture (a variant's ``VARIANT_CONFIGS`` applied), ``arch``
      overriding its constructor arguments (e.g. ``block_kinds=(True,) * 4`` for PFDNLite's
      first training stage);
    * a deploy checkpoint path (any layout ``esr_models.load`` detects) or a deploy model:
      its weights go to each re-parameterisable block's main 3x3 branch and every other branch
      outputs zero, so the model gives the deploy output (to float32 rounding) before any step;
    * a checkpoint written by ``esr train`` (its raw weights; ``use_ema=True`` for the EMA).
    """
    if isinstance(name_or_checkpoint, nn.Module):
        if hasattr(name_or_checkpoint, "arch_config"):
            return copy.deepcopy(name_or_checkpoint).train()
        return from_deploy(name_or_checkpoint).train()
    key = str(name_or_checkpoint).lower()
    if key in TRAIN_MODEL_NAMES:
        if not pretrained:
            cls = TRAIN_CLASSES[arch_name(key)]
            return cls(**{**VARIANT_CONFIGS.get(key, {}), **arch}).train()
        return from_deploy(load(key)).train()
    path = Path(name_or_checkpoint)
    if not path.is_file():
        raise InvalidValueError(f"unknown model {name_or_checkpoint!r}: expected one of {list(TRAIN_MODEL_NAMES)} "
                                "or the path of a checkpoint file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights_only errors of every kind (as arch/checkpoints.py)
        raise CheckpointError(f"{path}: cannot be read as a PyTorch checkpoint: {exc}") from exc
    if _is_training_checkpoint(state):
        return from_training_checkpoint(state, use_ema=use_ema).train()
    return from_deploy(load_state_dict_file(path)).train()


def deploy_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The deploy-form state dict (this package's key names) of a train-time model: every
    re-parameterisable block merged in float64 and rounded once to the model's dtype."""
    rep = {n: m for n, m in model.named_modules() if isinstance(m, REP_BLOCKS)}
    out = {}
    for k, v in model.state_dict().items():
        if any(k.startswith(p + ".") for p in rep):
            continue
        out[k] = v.detach().clone()
    for prefix, m in rep.items():
        w, b = m.merged()
        out[f"{prefix}.weight"], out[f"{prefix}.bias"] = w, b
    return out


@torch.no_grad()
def deploy(model: nn.Module) -> nn.Module:
    """The deploy-form reference model (``IFADNet``/``PFDNLite``/``RLFN``/``SPAN``, the classes
    ``esr_models.load`` returns) computing the train-time model's function, in eval mode on the
    model's device and dtype. A deploy model passes through as an eval-mode copy."""
    if not hasattr(model, "arch_config"):
        _arch_name(model)
        return copy.deepcopy(model).eval()
    sd = deploy_state_dict(model)
    p = next(model.parameters())
    _, out = detect({k: v.float().cpu() for k, v in sd.items()})
    return out.to(device=p.device, dtype=p.dtype).eval()


@torch.no_grad()
def prune_pfdnlite(model: TrainPFDNLite, blocks) -> TrainPFDNLite:
    """PFDNLite training step 4: replace the full blocks at ``blocks`` (0-based indices) by
    pruned ones initialised from them. Returns a new model; the input is left as it is.

    Weight mapping, full block -> pruned block (``s`` = split, C = channels):

    * ``attn`` (LocalAttention): copied unchanged.
    * ``conv1`` RepMBConv C -> C  ->  ``conv1`` RepMBConv C -> s: output channels [0, s) are
      kept, i.e. rows [0, s) of the main 3x3 weight/bias and of the 1x1 projection
      weight/bias; the 1x1 expansion and the depthwise 3x3 feed every output, so they are
      copied whole. Those are the channels the pruned block writes (it replaces channels
      [0, s) of the attention output with SiLU(conv1(...))), as the full block's conv2 did.
    * ``conv2`` RepMBConv s -> s: dropped. It acts after a SiLU, so it cannot be folded into
      conv1; the pruned block simply has no second conv.
    * channels [s, C) of conv1's output: dropped; the pruned block passes the attention output's
      channels [s, C) through instead.
    * ``conv3`` RepPointwiseConv C -> C: copied unchanged (same shapes in both forms).
    Blocks already pruned are left as they are.
    """
    cfg = dict(model.arch_config)
    kinds = list(cfg["block_kinds"])
    for i in blocks:
        kinds[i] = False
    cfg["block_kinds"] = kinds
    new = build(cfg).to(next(model.parameters()).device)
    s = cfg["split"]
    # Everything whose shape does not change (head, tail, attention, conv3, unpruned blocks).
    new_sd = new.state_dict()
    keep = {k: v for k, v in model.state_dict().items() if k in new_sd and new_sd[k].shape == v.shape}
    new.load_state_dict(keep, strict=False)
    for i in blocks:
        src, dst = model.blocks[i], new.blocks[i]
        if src.full:
            dst.conv1.slice_outputs_(src.conv1, slice(0, s))
        else:
            dst.load_state_dict(src.state_dict())
    return new.train(model.training)
