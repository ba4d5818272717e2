"""Tiled inference: full coverage, seamless blending, and how close it is to whole-image."""
from __future__ import annotations

import numpy as np
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


# ---------------------------------------------------------------- assembled piece by piece (issue 27)

def _old_upscale_tiled(fn, x, scale, tile, overlap):
    """The full-size accumulator the tiler had before it blended piece by piece: the reference
    its output must equal bit for bit."""
    from esr_models.infer.tiling import _ramp

    n, _, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h), min(tile, w)
            piece = fn(x[..., y0:y0 + th, x0:x0 + tw]).float()
            if out is None:
                out = torch.zeros(n, piece.shape[1], h * scale, w * scale)
                weight = torch.zeros(1, 1, h * scale, w * scale)
            ramp = overlap * scale
            wy = _ramp(th * scale, ramp, y0 > 0, y0 + th < h)
            wx = _ramp(tw * scale, ramp, x0 > 0, x0 + tw < w)
            mask = wy[:, None] * wx[None, :]
            oy, ox = y0 * scale, x0 * scale
            out[..., oy:oy + th * scale, ox:ox + tw * scale] += piece * mask
            weight[..., oy:oy + th * scale, ox:ox + tw * scale] += mask
    return out / weight


@pytest.mark.parametrize("n,h,w,tile,overlap", [(1, 47, 59, 16, 4), (2, 40, 33, 16, 8), (1, 30, 70, 20, 10),
                                                 (1, 64, 64, 64, 16), (1, 50, 23, 17, 8), (1, 37, 41, 12, 0)])
def test_blended_pieces_equal_the_full_size_accumulator_bit_for_bit(n, h, w, tile, overlap):
    from esr_models.infer.tiling import blend_tiles

    weights = torch.rand(3, 3, 3, 3)

    def fn(x):  # position-dependent through its borders, like the models
        return torch.nn.functional.interpolate(torch.nn.functional.conv2d(x, weights, padding=1),
                                               scale_factor=4, mode="bilinear", align_corners=False)

    x = torch.rand(n, 3, h, w)
    want = _old_upscale_tiled(fn, x, 4, tile, overlap)
    assert torch.equal(upscale_tiled(fn, x, 4, tile, overlap), want)
    seen = torch.zeros(h * 4, w * 4, dtype=torch.int32)
    got = torch.full_like(want, float("nan"))

    def emit(oy, ox, block):
        seen[oy:oy + block.shape[-2], ox:ox + block.shape[-1]] += 1
        got[..., oy:oy + block.shape[-2], ox:ox + block.shape[-1]] = block

    blend_tiles(fn, x, 4, tile, overlap, emit)
    assert (seen == 1).all() and torch.equal(got, want)


def _old_written_planes(sr: torch.Tensor, img) -> torch.Tensor:
    """What write_image wrote from the float output before (sr clamped, grey mean, alpha resized
    whole, x255 or x65535 rounded), as (H, W, C) integers."""
    sr = sr.clamp(0, 1)
    planes = sr.mean(dim=0, keepdim=True) if img.grayscale else sr
    if img.alpha is not None:
        alpha = torch.nn.functional.interpolate(img.alpha[None], scale_factor=4, mode="bicubic",
                                                align_corners=False)[0].clamp(0, 1)
        planes = torch.cat([planes, alpha], dim=0)
    planes = planes.clamp(0, 1)
    if img.bit_depth == 16:
        return (planes * 65535.0).round().to(torch.int32).permute(1, 2, 0)
    return (planes.clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0)


@pytest.mark.parametrize("kind", ["rgb", "grey+alpha", "rgba16", "grey16"])
@pytest.mark.parametrize("tile", [None, 16])
def test_upscaled_image_is_quantised_piece_by_piece_exactly_as_before(kind, tile):
    from esr_models.arch.pfdnlite import PFDNLite
    from esr_models.io.images import Image

    torch.manual_seed(1)
    h, w = 37, 45
    rgb = torch.rand(3, h, w)
    grey = kind.startswith("grey")
    if grey:
        rgb = rgb[:1].expand(3, -1, -1).contiguous()
    alpha = torch.rand(1, h, w) if "alpha" in kind or kind == "rgba16" else None
    img = Image(rgb, alpha, 16 if kind.endswith("16") else 8, grey)
    up = Upscaler(PFDNLite(), tile=tile, tile_overlap=6)
    want = _old_written_planes(up(rgb[None])[0], img)
    out = up.upscale_image(img)
    assert out.pixels.shape == (h * 4, w * 4, want.shape[-1])
    assert out.pixels.dtype == (np.uint16 if img.bit_depth == 16 else np.uint8)
    assert np.array_equal(out.pixels.astype(np.int64), want.numpy().astype(np.int64))
    assert out.rgb.shape == (1 if grey else 3, h * 4, w * 4)


def test_alpha_resized_in_pieces_equals_the_whole_resize():
    from esr_models.infer.upscaler import _alpha_block

    alpha = torch.rand(1, 23, 31)
    whole = torch.nn.functional.interpolate(alpha[None], scale_factor=4, mode="bicubic",
                                            align_corners=False)[0].clamp(0, 1)
    for oy, ox, bh, bw in [(0, 0, 92, 124), (0, 0, 8, 8), (4, 12, 40, 20), (80, 100, 12, 24), (40, 0, 52, 124)]:
        assert torch.equal(_alpha_block(alpha, 4, oy, ox, bh, bw), whole[:, oy:oy + bh, ox:ox + bw])


# ---------------------------------------------------------------- the overlap is at most half the tile (issue 27)

def test_overlap_above_half_the_tile_is_lowered_with_a_note():
    from esr_models.arch.pfdnlite import PFDNLite
    from esr_models.infer.upscaler import capped_overlap

    assert capped_overlap(48, 16) == (16, None)
    assert capped_overlap(32, 16) == (16, None)
    overlap, note = capped_overlap(17, 16)
    assert overlap == 8 and "--tile-overlap 16" in note and "using --tile-overlap 8" in note
    notes, calls = [], []
    model = PFDNLite()
    up = Upscaler(model, tile=17, tile_overlap=16, notify=notes.append)
    assert up.tile_overlap == 8 and len(notes) == 1
    real = model.forward
    model.forward = lambda x: calls.append(x.shape) or real(x)
    up(torch.rand(1, 3, 40, 40))
    assert len(calls) == len(tile_starts(40, 17, 8)) ** 2 == 16  # not one forward per pixel (24 ** 2)


def test_cli_tile_17_with_the_default_overlap_steps_by_half_the_tile(run_esr, tmp_path, random_png):
    src = random_png(tmp_path / "a.png", size=(40, 40))
    proc = run_esr("upscale", src, "-o", tmp_path / "out", "--model", "pfdnlite", "--tile", "17", "-q",
                   check=0, timeout=300)
    notes = [ln for ln in proc.stderr.splitlines() if ln.startswith("note: ")]
    assert notes == ["note: --tile-overlap 16 is more than half of --tile 17 (a step of 1 pixel(s) between "
                     "tiles); using --tile-overlap 8"], proc.stderr
    assert (tmp_path / "out" / "a_x4.png").is_file()
