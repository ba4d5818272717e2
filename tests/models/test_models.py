"""Reference models against the upstream golden outputs, and the model contract."""
from __future__ import annotations

import pytest
import torch

import esr_models
from esr_models.arch.layers import InputTooSmallError

pytestmark = pytest.mark.shared
GOLDEN_TOL = 1e-5


@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
@pytest.mark.parametrize("inp", ["baby", "comic_odd"])
def test_matches_upstream_golden(models, golden, name, inp):
    x, expected = golden(name, inp)
    with torch.inference_mode():
        out = models[name](x)
    assert out.shape == expected.shape
    assert (out - expected).abs().max().item() <= GOLDEN_TOL


@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_batch_and_channels_last_agree(models, golden, name):
    x, _ = golden(name, "comic_odd")
    batch = torch.cat([x, x.flip(-1)])
    with torch.inference_mode():
        single = torch.cat([models[name](x), models[name](x.flip(-1))])
        batched = models[name](batch)
        cl = models[name].to(memory_format=torch.channels_last)(batch.to(memory_format=torch.channels_last))
        models[name].to(memory_format=torch.contiguous_format)
    assert (batched - single).abs().max() <= GOLDEN_TOL
    assert (cl - single).abs().max() <= GOLDEN_TOL


@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_minimum_size_runs_and_below_is_a_clear_error(models, name):
    m = models[name]
    size = esr_models.min_input_size(m)
    with torch.inference_mode():
        out = m(torch.rand(1, 3, size, size + 3))
        assert out.shape == (1, 3, 4 * size, 4 * (size + 3))
        assert torch.isfinite(out).all()
        with pytest.raises(InputTooSmallError, match=f"at least {size}x{size}"):
            m(torch.rand(1, 3, size - 1, 64))


def test_wrong_channel_count_is_a_clear_error(models):
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        models["rlfn"](torch.rand(1, 4, 32, 32))


@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_detect_from_own_state_dict_round_trips(models, name, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(models[name].state_dict(), path)
    reloaded = esr_models.load_state_dict_file(path)
    assert type(reloaded) is type(models[name])
    x = torch.rand(1, 3, 20, 24)
    with torch.inference_mode():  # same class, weights, input and thread: the same computation
        assert torch.equal(reloaded(x), models[name](x))


def test_detect_reads_hyperparameters_from_shapes():
    from esr_models.arch.pfdnlite import PFDNLite
    from esr_models.arch.rlfn import RLFN

    small = PFDNLite(channels=32, block_kinds=(True, False), split=12)
    name, model = esr_models.detect(small.state_dict())
    assert name == "pfdnlite" and model.blocks[0].full and not model.blocks[1].full
    assert model.blocks[0].split == 12 and model.head.out_channels == 32
    name, model = esr_models.detect({"params": RLFN(channels=24, num_blocks=2).state_dict()})
    assert name == "rlfn" and len(model.blocks) == 2 and model.head.out_channels == 24


def test_unknown_state_dict_names_what_was_expected():
    with pytest.raises(esr_models.UnknownArchitectureError, match="fea_conv.weight") as info:
        esr_models.detect({"foo.weight": torch.zeros(1)})
    assert "foo.weight" in str(info.value)


def test_unknown_model_name():
    with pytest.raises(ValueError, match="expected one of"):
        esr_models.load("edsr")
