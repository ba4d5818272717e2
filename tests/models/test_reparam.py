"""Re-parameterisation: every train-time block and whole model merges exactly (<= 1e-5 max abs
in float32) into its deploy form, random and trained weights, every pixel including borders,
odd sizes, batch 2; ``trainable(upstream)`` reproduces the upstream model before any step."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import esr_models
from esr_models.arch.ifadnet import IFADNet
from esr_models.arch.pfdnlite import PFDNLite
from esr_models.arch.rlfn import RLFN
from esr_models.arch.span import SPAN, merge_conv3xc
from esr_models.training.models import (VARIANT_CONFIGS, TrainPFDNLite, TrainSPAN, deploy, deploy_state_dict,
                                        from_deploy,
                                        prune_pfdnlite, trainable)
from esr_models.training.reparam import (LAPLACIAN, SOBEL_X, SOBEL_Y, Conv3XC, EdgeRepConv, RepMBConv,
                                         RepPointwiseConv)

TOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: small convs, a shared machine


def _perturb_(module: torch.nn.Module, std: float = 0.05, seed: int = 1) -> None:
    """'Trained' weights: every parameter moved off its initial value, zeros included (so that
    branches a deploy init zeroes are live)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)


def _merged_conv(block, x):
    w, b = block.merged()
    return F.conv2d(x, w, b, padding=1)


BLOCKS = [
    ("edge", lambda: EdgeRepConv(8), 8),
    ("mbconv", lambda: RepMBConv(8, 8), 8),
    ("mbconv-pruned", lambda: RepMBConv(8, 4), 8),
    ("pointwise", lambda: RepPointwiseConv(8), 8),
]


@pytest.mark.parametrize("name,make,c", BLOCKS, ids=[b[0] for b in BLOCKS])
@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
@pytest.mark.parametrize("size", [(7, 5), (16, 16), (1, 3)])
def test_block_merge_exact(name, make, c, trained, size):
    block = make()
    if trained:
        _perturb_(block)
    x = torch.randn(2, c, *size)
    with torch.no_grad():
        ref = block(x)
        out = _merged_conv(block, x)
        deploy_conv = block.to_conv()(x)
    assert out.shape == ref.shape
    # Borders included: the whole tensor is compared, and the border ring separately.
    assert (out - ref).abs().max().item() <= TOL
    assert (deploy_conv - ref).abs().max().item() <= TOL
    ring = torch.ones(size, dtype=torch.bool)
    if min(size) > 2:
        ring[1:-1, 1:-1] = False
    assert (out - ref)[..., ring].abs().max().item() <= TOL


@pytest.mark.parametrize("c_in,c_out", [(8, 8), (3, 6)], ids=["square", "head-like"])
@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
def test_conv3xc_merge(c_in, c_out, trained):
    """SPAN's Conv3XC: the merged conv equals upstream's train-time forward (input zero-padded
    before the first 1x1, whose bias then lies on the padding, as the merged bias assumes) at
    every pixel, borders included, and is merge_conv3xc applied to the block's state dict."""
    torch.manual_seed(5)
    block = Conv3XC(c_in, c_out)
    if trained:
        _perturb_(block)
    with torch.no_grad():
        block.conv[0].bias.add_(0.5)  # a first-1x1 bias that makes the padding visible
    x = torch.randn(2, c_in, 9, 11)
    with torch.no_grad():
        ref = block(x)
        ref_by_hand = block.conv(F.pad(x, (1, 1, 1, 1), "constant", 0)) + block.sk(x)
        out = _merged_conv(block, x)
        deploy_conv = block.to_conv()(x)
        # What the border would be with the 1x1's output zero-padded instead (not upstream's).
        zero_padded = block.conv[2](block.conv[1](F.pad(block.conv[0](x), (1, 1, 1, 1)))) + block.sk(x)
    assert torch.equal(ref, ref_by_hand)
    assert (out - ref).abs().max().item() <= TOL
    assert (deploy_conv - ref).abs().max().item() <= TOL
    ring = torch.ones(9, 11, dtype=torch.bool)
    ring[1:-1, 1:-1] = False
    assert (out - ref)[..., ring].abs().max().item() <= TOL
    assert (zero_padded - ref)[..., ring].abs().max().item() > 1e-2
    # The merge is span.merge_conv3xc (upstream's update_params) on the block's own state dict.
    w, b = block.merged()
    w32, b32 = merge_conv3xc({f"p.{k}": v for k, v in block.state_dict().items()}, "p")
    assert w.shape == (c_out, c_in, 3, 3) and b.shape == (c_out,)
    assert (w - w32).abs().max() <= 1e-6 and (b - b32).abs().max() <= 1e-6


@pytest.mark.parametrize("norm", [True, False], ids=["norm", "no_norm"])
def test_span_from_deploy_round_trip(norm):
    """A deploy SPAN -> from_deploy -> the train-time forward equals it (borders included)
    before any step -> deploy() gives its weights back; every Conv3XC parameter is trainable."""
    torch.manual_seed(6)
    dm = SPAN(channels=12, num_blocks=2, norm=norm).eval()
    _perturb_(dm, std=0.02)
    model = from_deploy(dm)
    assert isinstance(model, TrainSPAN) and model.arch_config["norm"] is norm
    assert sum(isinstance(m, Conv3XC) for m in model.modules()) == 2 * 3 + 2  # SPABs, head, body tail
    x = torch.rand(2, 3, 13, 10)
    with torch.no_grad():
        assert (model.eval()(x) - dm(x)).abs().max().item() <= TOL
        again = deploy(model)
        assert type(again) is SPAN and (again(x) - dm(x)).abs().max().item() <= TOL
        for k, v in dm.state_dict().items():
            assert (again.state_dict()[k] - v).abs().max() <= 1e-6, k
    model.train()
    model(x).square().mean().backward()
    for m in (mod for mod in model.modules() if isinstance(mod, Conv3XC)):
        co = m.out_channels
        for zero in (m.sk.weight, m.conv[2].weight[:, co:]):  # zero at init, trainable
            assert zero.abs().sum() == 0
        assert m.sk.weight.grad.abs().sum() > 0 and m.conv[2].weight.grad[:, co:].abs().sum() > 0


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
def test_span_whole_model_merge_exact(trained):
    """TrainSPAN's deploy() equals its eval forward at every pixel. In float64: SPAN's features
    are large (its head sees the image times 255), so a random SPAN's float32 outputs carry
    ~1e-5 of rounding, which would hide nothing but would not show an exact merge either."""
    torch.manual_seed(7)
    model = trainable("span", pretrained=False, channels=8, num_blocks=2).double()
    if trained:
        _perturb_(model, std=0.02)
    model.eval()
    x = torch.rand(2, 3, 17, 23, dtype=torch.float64)
    assert type(deploy(model)) is SPAN  # (which rounds the merged weights to float32 once)
    dm = SPAN(channels=8, num_blocks=2).double().eval()
    dm.load_state_dict(deploy_state_dict(model))  # the float64 merge, not rounded
    with torch.no_grad():
        ref, out = model(x), dm(x)
    assert (out - ref).abs().max().item() <= TOL * 1e-3


def test_chain_pads_with_bias_not_zero():
    """The 1x1 -> 3x3 chains are padded with the 1x1's bias: with zero padding the border
    pixels would differ from the merged conv. Checked on the border ring only."""
    block = EdgeRepConv(4)
    _perturb_(block)
    with torch.no_grad():
        block.expand.bias.fill_(0.7)  # a bias that makes the padding visible
    x = torch.randn(2, 4, 9, 11)
    with torch.no_grad():
        ref = _merged_conv(block, x)
        ours = block.squeeze(F.pad(block.expand(x) - 0.7, (1, 1, 1, 1)) + 0.7)
        zero_padded = block.squeeze(F.pad(block.expand(x), (1, 1, 1, 1)))
        others = block(x) - ours  # every branch but the expand-squeeze one
    border = torch.ones(9, 11, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    assert ((ours + others) - ref)[..., border].abs().max() <= TOL
    assert ((zero_padded + others) - ref)[..., border].abs().max() > 1e-2
    assert ((zero_padded + others) - ref)[..., ~border].abs().max() <= TOL


def test_fixed_filters():
    r2 = 2 ** 0.5
    assert SOBEL_X[1] == (r2, 0.0, -r2) and SOBEL_Y == tuple(zip(*SOBEL_X))  # isotropic, transposed
    assert sum(map(sum, LAPLACIAN)) == 0
    block = EdgeRepConv(3)
    assert not any("mask" in n for n, _ in block.named_parameters())  # fixed, not learned
    assert {"sobel_x", "sobel_y", "laplacian"} == set(block.edge_scale.keys())


def _random_train_models():
    torch.manual_seed(3)
    return {"ifadnet": trainable("ifadnet", pretrained=False),
            "pfdnlite": trainable("pfdnlite", pretrained=False),
            "pfdnlite-full": trainable("pfdnlite", pretrained=False, block_kinds=(True,) * 4),
            "rlfn": trainable("rlfn", pretrained=False)}


@pytest.mark.parametrize("trained", [False, True], ids=["random", "trained"])
def test_whole_model_merge_exact(trained):
    x = torch.rand(2, 3, 17, 23)  # odd sizes, batch 2
    for name, model in _random_train_models().items():
        if trained:
            _perturb_(model, std=0.02)
        model.eval()
        dm = deploy(model)
        assert type(dm) in (IFADNet, PFDNLite, RLFN) and not dm.training
        with torch.no_grad():
            ref, out = model(x), dm(x)
        err = (out - ref).abs().max().item()
        assert err <= TOL, (name, err)
        # Borders: the outermost 4 output pixels (one LR pixel) on every side.
        assert (out - ref)[..., :4, :].abs().max() <= TOL and (out - ref)[..., :, -4:].abs().max() <= TOL


def test_deploy_state_dict_loads_with_detect():
    model = trainable("ifadnet", pretrained=False)
    dm = deploy(model)
    name, again = esr_models.detect(dm.state_dict())
    assert name == "ifadnet" and isinstance(again, IFADNet)


def test_pruning_weight_mapping():
    torch.manual_seed(0)
    full = TrainPFDNLite(block_kinds=(True,) * 4)
    _perturb_(full)
    pruned = prune_pfdnlite(full, [1, 2])
    assert pruned.arch_config["block_kinds"] == [True, False, False, True]
    s = full.blocks[1].split
    a = torch.randn(2, 48, 11, 13)
    with torch.no_grad():
        for i in (1, 2):
            # conv1 of the pruned block = output channels [0, s) of the full block's conv1: rows
            # [0, s) of main and project, expand and depthwise whole. Exact on the weights (copies,
            # the same on any CPU). The outputs come from convs with s and C outputs, which oneDNN
            # or BLAS may sum in different orders (not bit-identical in float32 on every CPU), so
            # they are compared in float64, where a wrong row is ~1e-1 off and rounding ~1e-15.
            src, dst = full.blocks[i].conv1.state_dict(), pruned.blocks[i].conv1.state_dict()
            assert dst.keys() == src.keys()
            for k, v in src.items():
                assert torch.equal(dst[k], v[:s] if k.startswith(("main.", "project.")) else v), (i, k)
            p64, f64 = (copy.deepcopy(b.blocks[i].conv1).double() for b in (pruned, full))
            assert (p64(a.double()) - f64(a.double())[:, :s]).abs().max() <= 1e-12
            # attention and conv3 are copied unchanged (same modules, shapes and input: the same
            # computation, so exact).
            assert torch.equal(pruned.blocks[i].attn(a), full.blocks[i].attn(a))
            assert torch.equal(pruned.blocks[i].conv3(a), full.blocks[i].conv3(a))
            assert pruned.blocks[i].conv2 is None
        for i in (0, 3):  # untouched blocks
            for k, v in full.blocks[i].state_dict().items():
                assert torch.equal(pruned.blocks[i].state_dict()[k], v)
    assert torch.equal(pruned.head.weight, full.head.weight) and torch.equal(pruned.tail.weight, full.tail.weight)
    # The pruned model merges exactly too.
    x = torch.rand(2, 3, 15, 9)
    with torch.no_grad():
        assert (deploy(pruned)(x) - pruned(x)).abs().max() <= TOL


@pytest.mark.shared
def test_trainable_from_upstream_matches_deploy(models):
    x = torch.rand(2, 3, 19, 16)
    for name, ref in models.items():
        model = trainable(name)
        assert model.training and hasattr(model, "arch_config")
        if name != "rlfn":  # RLFN has nothing to re-parameterise
            assert any(type(m).__name__ in ("EdgeRepConv", "RepMBConv", "Conv3XC") for m in model.modules())
        with torch.no_grad():
            out = model.eval()(x)
            want = ref(x)
            assert (out - want).abs().max().item() <= TOL, name
            # ... and deploy() of it gives the upstream weights back.
            dm = deploy(model)
            for k, v in ref.state_dict().items():
                assert (dm.state_dict()[k] - v).abs().max() <= 1e-6, (name, k)
        # Every non-main branch outputs zero but is trainable (gets a gradient).
        model.train()
        model(x).square().mean().backward()
        rep = [m for m in model.modules() if hasattr(m, "merged")]
        for m in rep:
            if isinstance(m, Conv3XC):  # the skip, and the last 1x1's columns of the extra channels
                co = m.out_channels
                zeroed = [(m.sk.weight, m.sk.weight.grad), (m.conv[2].weight[:, co:], m.conv[2].weight.grad[:, co:])]
            else:
                last = getattr(m, "squeeze", None) or getattr(m, "project", None) or getattr(m, "pointwise", None)
                zeroed = [(last.weight, last.weight.grad)]
            for w, g in zeroed:
                assert w.abs().sum() == 0 and g is not None
                assert g.abs().sum() > 0


@pytest.mark.shared
def test_variant_configs_match_their_checkpoints(models):
    """A variant trained from scratch (trainable("spantiny", pretrained=False)) has its upstream
    checkpoint's shape; its arch_config names the architecture."""
    for name, cfg in VARIANT_CONFIGS.items():
        fresh = trainable(name, pretrained=False)
        assert fresh.arch_config["name"] == esr_models.arch.registry.architecture(name).name != name
        assert {k: v.shape for k, v in deploy(fresh).state_dict().items()} == \
            {k: v.shape for k, v in models[name].state_dict().items()}, name
        assert all(fresh.arch_config[k] == v for k, v in cfg.items())


@pytest.mark.shared
def test_trainable_from_checkpoint_path():
    from esr_models.arch import weights

    path = weights.resolve("pfdnlite", allow_download=False)
    model = trainable(str(path))
    ref = esr_models.load("pfdnlite")
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert (model.eval()(x) - ref(x)).abs().max() <= TOL


def test_trainable_rejects_unknown():
    with pytest.raises(ValueError, match="unknown model"):
        trainable("no-such-model")
