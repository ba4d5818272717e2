"""spandrel support: ``register_spandrel()`` adds IFADNet, PFDNLite, RLFN and SPAN to spandrel's
architecture registry, so that hosts which load SR models through spandrel (chaiNNer, ComfyUI,
...) load the upstream checkpoints (and this package's own key layout) like any other model::

    import esr_models, spandrel
    esr_models.register_spandrel()
    desc = spandrel.ModelLoader().load_from_file("team01_pfdnlite.pth")
    desc.scale, desc.size_requirements.minimum    # 4, the model's min_size

Detection uses the same key sets, in the same order, as ``esr_models.arch.registry.detect``, and
loading goes through ``detect`` itself, so ``desc.model`` is this package's reference model with
exactly the weights ``esr_models.load`` gives (same outputs, bit for bit). spandrel is an
optional dependency: it is imported only when ``register_spandrel`` is called.

What the descriptors declare, and why:
- ``scale``: the tail's pixel-shuffle factor (4 for the five upstream files).
- SPAN: spandrel has its own SPAN, which claims checkpoints in its train-time layout (Conv3XC
  branches; it is registered before ours); it refuses the NTIRE 2024 deploy-form files
  (``eval_conv`` only), which ours loads. ``esr_models.load`` takes both layouts.
- ``size_requirements.minimum``: the model's ``min_size`` (its architecture record's: what
  the attention pooling needs); spandrel's ``__call__`` pads smaller images itself.
  No ``multiple_of`` (any H, W works) and no ``square``.
- ``tiling``: SUPPORTED. The models are convolutional with a bounded receptive field (the
  attention branches pool 7x7 windows of a stride-2 map, then upsample), so tiles with an
  overlap stitch without seams; ``esr upscale --tile`` relies on the same property.
- ``supports_half`` / ``supports_bfloat16``: True. Every op the models use runs in float16 and
  bfloat16 on CUDA and, with torch >= 2.1, on CPU; tests/models/test_spandrel.py runs each model in
  both dtypes through the descriptor and bounds the error against float32.
"""
from __future__ import annotations

import functools

import torch
from torch import nn

from ..arch.checkpoints import CheckpointError, detect_checked
from ..arch.registry import ARCHITECTURES, architecture, unwrap
from ..fused.fusion import fuse_

# spandrel architecture ids are global; a namespace keeps ours from ever colliding with a
# built-in of the same name (a later spandrel could add e.g. "RLFN").
_ID_PREFIX = "esr_models."
# What our loaders return: the reference model (None) or the fused one for this backend
# (register_spandrel(fused=...)); one setting, as the architecture ids are global.
_FUSED_BACKEND: list = [None]


def _architecture_of(state_dict: dict) -> str | None:
    """The architecture ``registry.detect`` would pick for this state dict, or None: the first
    of ``registry.ARCHITECTURES`` whose upstream or own identifying keys are all present."""
    try:
        sd = unwrap(state_dict)
    except Exception:  # not a mapping of the expected kind: not ours
        return None
    for arch in ARCHITECTURES:
        if all(k in sd for k in arch.upstream_keys) or all(k in sd for k in arch.own_keys):
            return arch.name
    return None


def _tags(model: nn.Module) -> list[str]:
    # spandrel's convention: short hyper-parameter tags ("64nf", "16nb", ...).
    return [f"{model.head.out_channels}nf", f"{len(model.blocks)}nb"]


def _import_spandrel():
    try:
        import spandrel
    except ModuleNotFoundError as exc:
        if exc.name == "spandrel":
            raise ImportError("spandrel is not installed: pip install 'esr-kernels[spandrel]' "
                              "(or pip install spandrel)") from exc
        raise ImportError(f"spandrel could not be imported ({exc}). spandrel imports torchvision, which "
                          f"must be the build matching this torch ({torch.__version__})") from exc
    except (ImportError, RuntimeError, OSError) as exc:
        # A torchvision built for another torch (e.g. a CUDA wheel next to a CPU torch) fails
        # at import with a RuntimeError ("operator torchvision::nms does not exist").
        raise ImportError(f"spandrel could not be imported ({type(exc).__name__}: {exc}). spandrel imports "
                          f"torchvision, which must be the build matching this torch ({torch.__version__}); "
                          "for a CPU-only torch install torchvision from the same (CPU) index") from exc
    return spandrel


@functools.lru_cache(maxsize=None)
def _arch_supports() -> tuple:
    """One spandrel ArchSupport per architecture, built once (so that registering is idempotent
    and every registry gets the same objects)."""
    spandrel = _import_spandrel()

    class _EsrArchitecture(spandrel.Architecture):
        def __init__(self, name: str):
            display = architecture(name).display
            super().__init__(id=_ID_PREFIX + display, name=display,
                             detect=lambda state_dict: _architecture_of(state_dict) == name)
            self.esr_name = name

        def load(self, state_dict):
            found, model = detect_checked(state_dict)
            if found != self.esr_name:  # detect() and self.detect() share their rule
                raise spandrel.UnsupportedModelError(
                    f"state dict is a {found} checkpoint, not {self.esr_name}")
            for key, value in model.state_dict().items():
                if value.is_floating_point() and not torch.isfinite(value).all():
                    raise CheckpointError(f"weight {key!r} has NaN or Inf values; refusing to load it")
            channels = model.head.in_channels
            if _FUSED_BACKEND[0] is not None:
                fuse_(model.eval(), _FUSED_BACKEND[0])
            return spandrel.ImageModelDescriptor(
                model.eval(), model.state_dict(), self, purpose="SR", tags=_tags(model),
                supports_half=True, supports_bfloat16=True, scale=int(model.scale),
                input_channels=channels, output_channels=channels,
                size_requirements=spandrel.SizeRequirements(minimum=int(model.min_size)),
                tiling=spandrel.ModelTiling.SUPPORTED)

    return tuple(spandrel.ArchSupport.from_architecture(_EsrArchitecture(a.name)) for a in ARCHITECTURES)


def register_spandrel(registry=None, fused: bool | None = None, backend: str = "auto") -> list:
    """Add IFADNet, PFDNLite, RLFN and SPAN to spandrel's registry (``spandrel.MAIN_REGISTRY``, which
    ``spandrel.ModelLoader()`` uses, unless ``registry`` is given) and return their
    ``ArchSupport`` entries. Calling it again is harmless: entries already there are kept.
    ``fused=True``: from then on the descriptors' models are fused (``fuse_(model, backend)`` on
    the CPU where spandrel loads them: backend "auto" picks the native CPU kernels, with a
    warning and the reference where none apply); ``fused=False`` goes back to the reference;
    None leaves the choice as it is. The choice holds for every registry (spandrel's
    architecture ids are global). Fused models are inference-only (spandrel's ``__call__``
    runs under ``torch.inference_mode``).
    Raises ImportError (saying what to install) when spandrel cannot be imported."""
    spandrel = _import_spandrel()
    if fused is not None:
        _FUSED_BACKEND[0] = backend if fused else None
    target = spandrel.MAIN_REGISTRY if registry is None else registry
    supports = _arch_supports()
    target.add(*supports, ignore_duplicates=True)
    return [target[s.architecture.id] for s in supports]
