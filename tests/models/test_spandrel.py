"""spandrel support (esr_models.register_spandrel): spandrel's ModelLoader loads the five upstream
files as SR descriptors whose flags these tests back, and whose model is the reference model."""
from __future__ import annotations

import enum
import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

import esr_models
from esr_models.arch import weights
from esr_models.arch.registry import architecture
from esr_models.io.images import read_image
from esr_models.arch.checkpoints import CheckpointError
from esr_models.infer.tiling import upscale_tiled

pytestmark = pytest.mark.shared

NAMES = ["ifadnet", "pfdnlite", "rlfn", "span", "spantiny"]
MIN_SIZE = {"ifadnet": 15, "pfdnlite": 7, "rlfn": 15, "span": 1, "spantiny": 1}
# Max / mean abs error of a float16 / bfloat16 run against float32 on [0, 1] images. Measured
# on CPU at 19x22 of uniform noise (IFADNet, PFDNLite, RLFN): float16 <= 4.8e-3 max, 5.3e-4 mean;
# bfloat16 <= 3.8e-2 max, 4.5e-3 mean (at 31x37 the max reached 1.1e-2 and 8.4e-2). On a 40x48
# crop of Set5's baby, all five models: float16 <= 5.0e-3 max, bfloat16 <= 3.0e-2 (spantiny).
HALF_TOL = {torch.float16: (3e-2, 1.5e-3), torch.bfloat16: (1.5e-1, 1e-2)}


def _torchvision_importable() -> bool:
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:  # absent, or built for another torch (RuntimeError at import)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        return False


def _import_spandrel():
    """spandrel imports torchvision at import time (two helpers of its LaMa and RestoreFormer
    architectures). Where the installed torchvision cannot be imported (here: only a CUDA
    torchvision wheel exists for this CPU-only torch), a stand-in providing just those names
    is used while spandrel is imported, then removed from sys.modules, so that nothing else
    sees it. Nothing in these tests calls it; with a working torchvision it is not used."""
    if importlib.util.find_spec("spandrel") is None:
        pytest.skip("spandrel is not installed (pip install 'esr-kernels[spandrel]')")
    if "spandrel" in sys.modules or _torchvision_importable():
        import spandrel
        return spandrel

    class InterpolationMode(enum.Enum):
        NEAREST = "nearest"
        BILINEAR = "bilinear"
        BICUBIC = "bicubic"

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stand-in (tests/models/test_spandrel.py): not available")

    tv, tr, fn = (types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                                 "torchvision.transforms.functional"))
    fn.InterpolationMode, fn.rotate, fn.normalize = InterpolationMode, unavailable, unavailable
    tv.transforms, tr.functional = tr, fn
    stubs = {"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn}
    sys.modules.update(stubs)
    try:
        import spandrel
    finally:
        for name in stubs:
            sys.modules.pop(name, None)
    return spandrel


@pytest.fixture(scope="module")
def spandrel():
    mod = _import_spandrel()
    esr_models.register_spandrel()
    return mod


def _file(name: str) -> Path:
    directory = os.environ.get("ESR_WEIGHTS_DIR")
    if not directory:
        pytest.skip("ESR_WEIGHTS_DIR is not set")
    return Path(directory) / weights.CHECKPOINTS[name].filename


def test_register_is_idempotent(spandrel):
    before = len(spandrel.MAIN_REGISTRY)
    supports = esr_models.register_spandrel()
    assert len(spandrel.MAIN_REGISTRY) == before  # already registered by the fixture
    assert [s.architecture.name for s in supports] == ["IFADNet", "PFDNLite", "RLFN", "SPAN"]
    assert all(s.architecture.id in spandrel.MAIN_REGISTRY for s in supports)
    own = spandrel.ArchRegistry()
    assert len(esr_models.register_spandrel(own)) == 4 and len(own) == 4
    esr_models.register_spandrel(own)
    assert len(own) == 4


@pytest.mark.parametrize("name", NAMES)
def test_loader_returns_sr_descriptor_with_reference_model(spandrel, models, name):
    desc = spandrel.ModelLoader().load_from_file(_file(name))
    assert isinstance(desc, spandrel.ImageModelDescriptor)
    assert desc.purpose == "SR" and desc.scale == 4
    assert desc.input_channels == desc.output_channels == 3
    req = desc.size_requirements
    assert (req.minimum, req.multiple_of, req.square) == (MIN_SIZE[name], 1, False)
    assert req.minimum == esr_models.min_input_size(models[name])
    assert desc.tiling == spandrel.ModelTiling.SUPPORTED
    assert desc.supports_half and desc.supports_bfloat16
    assert type(desc.model) is type(models[name]) and not desc.model.training
    assert desc.tags == [f"{models[name].head.out_channels}nf", f"{len(models[name].blocks)}nb"]
    x = torch.rand(1, 3, 23, 29)  # odd sizes
    with torch.inference_mode():
        ref = models[name](x)
        # Same class, weights, input and thread count: the same computation, exact on any CPU.
        assert torch.equal(desc.model(x), ref)  # the same weights, bit for bit
        assert torch.equal(desc(x), ref.clamp(0, 1))  # spandrel's call clamps to [0, 1]
        # Below the minimum spandrel pads (as size_requirements tell it to) and crops back.
        assert desc(torch.rand(1, 3, 5, 6)).shape == (1, 3, 20, 24)


@pytest.mark.parametrize("name", NAMES)
def test_only_our_architecture_claims_each_file(spandrel, models, name):
    """Detection agrees with esr_models.arch.registry.detect, and no built-in claims these files
    (nor do ours claim the others': each claims only its own)."""
    loader = spandrel.ModelLoader()
    sd = loader.load_state_dict_from_file(_file(name))
    claims = [a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures("detection") if a.detect(sd)]
    assert claims == [f"esr_models.{type(models[name]).__name__}"]
    assert esr_models.detect(sd)[0] == architecture(name).name  # "spantiny" is a SPAN
    # This package's own key layout loads too, to the same model.
    desc = loader.load_from_state_dict({k: v.clone() for k, v in models[name].state_dict().items()})
    x = torch.rand(1, 3, 17, 16)
    with torch.inference_mode():
        assert torch.equal(desc.model(x), models[name](x))


def _spandrel_span(spandrel, channels: int, scale: int, norm: bool = True):
    """spandrel's own SPAN (its train-time form: Conv3XC branches) with random weights, in eval
    mode (where spandrel merges the branches before every forward), and its state dict."""
    from spandrel.architectures.SPAN import SPAN

    model = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=channels, upscale=scale, norm=norm)
    with torch.no_grad():
        for p in model.parameters():  # every branch non-trivial, outputs of moderate size
            p.copy_(torch.randn_like(p) * 0.3 / p[0].numel() ** 0.5)
    return model.eval(), {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("channels,scale,norm", [(16, 2, True), (20, 4, True), (12, 3, False), (8, 1, True)])
def test_span_equals_spandrels_span_on_its_checkpoints(spandrel, channels, scale, norm):
    """A SPAN checkpoint in spandrel's (train-time) layout, any width and scale, also the
    no_norm form: spandrel's loader takes it with its own SPAN, esr_models loads it (branches
    merged as spandrel merges them) to the same outputs."""
    theirs, sd = _spandrel_span(spandrel, channels, scale, norm)
    desc = spandrel.ModelLoader().load_from_state_dict(dict(sd))
    assert desc.architecture.id == "SPAN"  # spandrel's built-in claims its own layout
    name, ours = esr_models.detect(dict(sd))
    assert name == "span" and (ours.scale, ours.head.out_channels, ours.norm) == (scale, channels, norm)
    x = torch.rand(2, 3, 19, 23)
    with torch.inference_mode():
        ref = theirs(x)
        assert ref.abs().max() > 0.05  # not a degenerate network
        assert (ours(x) - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("name", ["span", "spantiny"])
def test_deploy_span_checkpoints_load_through_spandrel(spandrel, models, name):
    """spandrel's own SPAN refuses the challenge's deploy-form files (no train-time branches):
    with our registration spandrel loads them, as our SPAN."""
    sd = spandrel.ModelLoader().load_state_dict_from_file(_file(name))
    builtin = spandrel.MAIN_REGISTRY.get("SPAN")
    assert not builtin.architecture.detect(sd)
    desc = spandrel.ModelLoader().load_from_file(_file(name))
    assert desc.architecture.id == "esr_models.SPAN" and type(desc.model) is type(models[name])


@pytest.mark.native_cpu
@pytest.mark.parametrize("name", ["span", "rlfn"])
def test_fused_models_when_asked(spandrel, models, golden, name):
    """register_spandrel(fused=True): the descriptor's model is the fused one (native CPU
    kernels), equal to the reference within the fused models' float32 bar; fused=False goes back."""
    try:
        esr_models.register_spandrel(fused=True)
        desc = spandrel.ModelLoader().load_from_file(_file(name))
    finally:
        esr_models.register_spandrel(fused=False)
    assert getattr(desc.model, "_esr_fused_backend", None) == "cpu"
    x = golden(name, "comic_odd")[0]
    with torch.inference_mode():
        assert (desc(x) - models[name](x).clamp(0, 1)).abs().max() <= 1e-5
    plain = spandrel.ModelLoader().load_from_file(_file(name))
    assert getattr(plain.model, "_esr_fused_backend", None) is None


def test_non_finite_weights_are_refused(spandrel, models):
    sd = {k: v.clone() for k, v in models["pfdnlite"].state_dict().items()}
    sd["head.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="NaN"):
        spandrel.ModelLoader().load_from_state_dict(sd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("name", NAMES)
def test_half_precision_flags_are_backed(spandrel, models, golden, name, dtype):
    """supports_half / supports_bfloat16: the descriptor runs in that dtype (here on the CPU,
    where torch >= 2.1 has float16 and bfloat16 kernels for every op the models use) and stays
    close to float32, on image content (a 19x22 crop of Set5's baby: uniform noise, far from
    any photo, drives SPAN's x255-scaled features so high that bfloat16 was 0.72 off)."""
    desc = spandrel.ModelLoader().load_from_file(_file(name)).to(dtype)
    assert desc.dtype == dtype
    x = golden(name, "baby")[0][..., 40:59, 50:72].contiguous()
    with torch.inference_mode():
        out = desc(x.to(dtype))
        ref = models[name](x).clamp(0, 1)
    assert out.dtype == dtype and torch.isfinite(out).all()
    err = (out.float() - ref).abs()
    max_tol, mean_tol = HALF_TOL[dtype]
    assert err.max() <= max_tol and err.mean() <= mean_tol, (err.max().item(), err.mean().item())


@pytest.mark.parametrize("name", NAMES)
def test_tiling_flag_is_backed(spandrel, shared, name):
    """ModelTiling.SUPPORTED: tiles with an overlap, blended, give the whole-image output to
    within 40 dB PSNR (measured 42-44 dB; tests/models/test_tiling.py checks the same through esr upscale)."""
    desc = spandrel.ModelLoader().load_from_file(_file(name))
    x = read_image(shared / "data" / "Set14" / "baboon.png").rgb[None, :, :56, :64].contiguous()
    with torch.inference_mode():
        whole = desc(x)
        tiled = upscale_tiled(desc, x, desc.scale, tile=40, overlap=16)  # 2x2 tiles
    mse = (tiled - whole).pow(2).mean().item()
    assert mse > 0  # the tiles did see different pooling windows
    assert 10 * torch.log10(torch.tensor(1.0 / mse)).item() >= 40.0


def test_a_real_torchvision_where_one_is_required():
    """.ci/cuda-build runs this file in the CUDA-torch venv, which has the torchvision built for
    its torch, with ESR_REQUIRE_REAL_TORCHVISION=1: there spandrel must import the real one,
    never the stand-in above."""
    if os.environ.get("ESR_REQUIRE_REAL_TORCHVISION") != "1":
        pytest.skip("only where a torchvision for this torch is installed (.ci/cuda-build)")
    assert _torchvision_importable()
    spandrel = _import_spandrel()
    import torchvision

    assert sys.modules["torchvision"] is torchvision and hasattr(torchvision, "__version__")
    assert spandrel.ModelLoader is not None

