"""Tiled inference: full coverage, seamless blending, and how close it is to whole-image."""
from __future__ import annotations

import pytest
import torch

from esr_models.evaluation import psnr
from esr_models.io.images import read_image, to_uint8
from esr_models.infer.tiling import tile_starts, upscale_tiled
from esr_models.infer.upscaler import Upscaler


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (33, 32, 8), (32, 32, 0), (17, 64, 16)])
def test_tiles_cover_everything_with_full_size_tiles(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    covered = torch.zeros(length, dtype=torch.bool)
    for s in starts:
        covered[s:s + tile] = True
        assert s + min(tile, length) <= length
    assert covered.all()


def test_pointwise_model_is_reproduced_exactly_by_tiling():
    # A position-independent "model": tiling must give exactly the whole-image answer.
    def fn(x):
        return torch.nn.functional.interpolate(x * 2 + 1, scale_factor=4, mode="nearest")

    x = torch.rand(2, 3, 47, 59)
    assert torch.allclose(upscale_tiled(fn, x, 4, tile=16, overlap=4), fn(x), atol=1e-6)


@pytest.mark.shared
@pytest.mark.parametrize("name", ["ifadnet", "pfdnlite", "rlfn"])
def test_tiled_output_close_to_whole_and_seamless(models, shared, name):
    x = read_image(shared / "data" / "Set14" / "baboon.png").rgb[None, :, :120, :150]
    whole = Upscaler(models[name])(x)
    tiled = Upscaler(models[name], tile=48, tile_overlap=16)(x)
    hard = Upscaler(models[name], tile=48, tile_overlap=0)(x)
    # The attention pooling sees a different window per tile, so outputs differ slightly
    # everywhere; blending must keep that small and better than hard tile edges.
    close = psnr(to_uint8(tiled[0]), to_uint8(whole[0]))
    assert close >= 40.0
    assert close > psnr(to_uint8(hard[0]), to_uint8(whole[0]))
    # No seams: the error in 4-px bands around tile boundaries is no worse than elsewhere x2.
    diff = (tiled - whole).abs().mean(dim=(0, 1))
    starts = [s * 4 for s in tile_starts(120, 48, 16)[1:]] + [(s + 48) * 4 for s in tile_starts(120, 48, 16)[:-1]]
    band = torch.zeros_like(diff, dtype=torch.bool)
    for s in starts:
        band[max(s - 4, 0):s + 4] = True
    assert diff[band].mean() <= 2 * diff[~band].mean()


def test_bad_tile_arguments_are_clear():
    from esr_models.arch.pfdnlite import PFDNLite

    with pytest.raises(ValueError, match="minimum input size 7"):
        Upscaler(PFDNLite(), tile=5)
    with pytest.raises(ValueError, match="overlap"):
        Upscaler(PFDNLite(), tile=32, tile_overlap=32)
