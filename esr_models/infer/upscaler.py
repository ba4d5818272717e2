"""From an image to the model and back: device, dtype, tiling, alpha and grayscale.

An image's output is assembled piece by piece (``upscale_image``): each blended piece of the
model's output is clamped, quantised to the depth ``write_image`` writes and stored in one
preallocated uint8/uint16 array, so no full-size float buffer ever exists; with
``$ESR_MAX_MEMORY_MB`` (or the memory available) the tile is chosen so that the input, that
array, the writer's copy and the tile's buffers all fit (``_plan``)."""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from esr_kernels.errors import EsrError, InvalidValueError

from ..io.images import Image
from ..io.jobs import format_bytes
from .loading import min_input_size
from .memory import available_bytes, choose_tile, memory_cap_bytes
from .tiling import blend_tiles, upscale_tiled

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Share of the available memory a run plans to fill, every buffer it allocates counted (input,
# output, the tile's forward and blending); the rest: the allocator's slack, the estimates'
# error, other programs.
MEMORY_SHARE = 0.75

# Rows of a whole-image output quantised at a time (times the width: about 4 MB of float32).
_BAND_BYTES = 4 << 20


class MemoryBudgetError(EsrError, MemoryError):
    """An image whose input and output alone do not fit in the memory this run may use."""


def capped_overlap(tile: int, overlap: int) -> tuple[int, str | None]:
    """The overlap used with ``tile``, and a note when it differs from ``overlap``: the step
    between tiles (tile - overlap) is at least half the tile, so an overlap above tile // 2 is
    lowered to it (``--tile 17`` with the default overlap of 16 would step one pixel at a time:
    one forward per pixel)."""
    if overlap <= tile // 2:
        return overlap, None
    return tile // 2, (f"--tile-overlap {overlap} is more than half of --tile {tile} (a step of "
                       f"{tile - overlap} pixel(s) between tiles); using --tile-overlap {tile // 2}")


class Upscaler:
    """Runs ``model`` on float images in [0, 1].

    Args:
        model: an esr_models model (any device/dtype; it is moved to ``device``/``dtype``).
        tile: tile size in LR pixels, or None for whole-image inference.
        tile_overlap: LR pixels shared by neighbouring tiles; more than half the tile is
            lowered to half of it (``capped_overlap``), with a note through ``notify``.
        auto_tile: with ``tile=None``, tile anyway when a whole image would not fit in the
            memory available (tile size chosen from it), and say so through ``notify``.
        notify: called with a message when auto-tiling kicks in (default: no message).
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, tile: int | None = None, tile_overlap: int = 16,
                 auto_tile: bool = False, notify: Callable[[str], None] | None = None):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.scale = int(getattr(model, "scale", 4))
        self.min_size = min_input_size(model)
        self.notify = notify or (lambda msg: None)
        if tile is not None and tile < self.min_size:
            raise InvalidValueError(f"tile size {tile} is below the model's minimum input size {self.min_size}")
        if tile is not None and not 0 <= tile_overlap < tile:
            raise InvalidValueError(f"tile overlap must be in [0, tile size); got {tile_overlap} for tile {tile}")
        if tile is not None:
            tile_overlap, note = capped_overlap(tile, tile_overlap)
            if note:
                self.notify(note)
        self.tile, self.tile_overlap = tile, tile_overlap
        self.auto_tile = auto_tile and tile is None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(device=self.device, dtype=self.dtype)).float()

    def _overlap(self, tile: int) -> int:
        # An automatic tile keeps a quarter of itself as overlap at most: a step of one pixel
        # (tile 16, overlap 15) would run a forward per pixel.
        return self.tile_overlap if tile == self.tile else min(self.tile_overlap, tile // 4)

    def _plan(self, x: torch.Tensor, fixed: int) -> int | None:
        """The tile for ``x`` (None: whole image). ``fixed``: the bytes this run holds besides the
        forward and the tile buffers (input, output) in the memory the forward uses."""
        if not self.auto_tile:
            return self.tile
        n, _, h, w = x.shape
        budget = int(available_bytes(self.device) * MEMORY_SHARE) - fixed
        tile = choose_tile(self.model, n, h, w, self.dtype, budget, self.min_size, self.scale, self._overlap)
        if tile is not None:
            self.notify(f"{h}x{w} does not fit in the {format_bytes(max(budget, 0))} available to one "
                        f"forward; tiling automatically with --tile {tile}")
        return tile

    def _fits_one_tile(self, x: torch.Tensor, tile: int | None) -> bool:
        return tile is None or (x.shape[-2] <= tile and x.shape[-1] <= tile)

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float [0, 1] -> (N, 3, sH, sW) float32 on the model's device, unclamped.
        The whole float32 output is one tensor: for large images, ``upscale_image``."""
        n, c, h, w = x.shape
        out_bytes = n * c * h * w * self.scale ** 2 * 4
        on_host = x.numel() * x.element_size() if self.device.type == "cpu" else 0
        tile = self._plan(x, out_bytes + on_host)
        if self._fits_one_tile(x, tile):
            return self._run(x)
        return upscale_tiled(self._run, x, self.scale, tile, self._overlap(tile))

    @torch.inference_mode()
    def upscale_image(self, img: Image) -> Image:
        """``img`` upscaled, as ``write_image`` will write it: an Image whose ``pixels`` hold the
        written planes ((sH, sW, C) uint8, or uint16 for 16-bit; grey or RGB, then alpha) and
        whose ``rgb``/``alpha`` are views of them. Assembled piece by piece (module docstring).
        MemoryBudgetError when the input and output alone do not fit in the memory available."""
        x = img.rgb[None]
        _, _, h, w = x.shape
        s = self.scale
        colour = 1 if img.grayscale else 3
        planes = colour + (img.alpha is not None)
        depth = np.uint16 if img.bit_depth == 16 else np.uint8
        out_bytes = h * w * s * s * planes * np.dtype(depth).itemsize
        on_host = sum(t.numel() * t.element_size() for t in (img.rgb, img.alpha) if t is not None)
        on_host += out_bytes
        self._check_fits(h, w, on_host + _writer_bytes(h * w * s * s, planes, out_bytes))
        tile = self._plan(x, on_host if self.device.type == "cpu" else 0)
        pixels = np.empty((h * s, w * s, planes), dtype=depth)
        alpha_of = None if img.alpha is None else _alpha_pieces(img.alpha, s)

        def store(oy: int, ox: int, block: torch.Tensor) -> None:
            _store(img.grayscale, pixels, oy, ox, block[0].cpu(), alpha_of)

        if self._fits_one_tile(x, tile):
            sr = self._run(x)
            band = max(s, _BAND_BYTES // (sr.shape[1] * sr.shape[-1] * 4) // s * s)
            for oy in range(0, sr.shape[-2], band):
                store(oy, 0, sr[..., oy:oy + band, :])
            del sr
        else:
            blend_tiles(self._run, x, s, tile, self._overlap(tile), store)
        view = torch.from_numpy(pixels).permute(2, 0, 1)
        return dataclasses.replace(img, rgb=view[:colour], alpha=view[colour:] if planes > colour else None,
                                   pixels=pixels)

    def _check_fits(self, h: int, w: int, need: int) -> None:
        """Refuse an image whose host buffers alone (input, output, the writer's copy) exceed the
        memory available: no tile would help. Not on CUDA (the buffers are on the host)."""
        if self.device.type != "cpu" or not self.auto_tile:
            return
        available = available_bytes(self.device)
        if need <= available:
            return
        cap = memory_cap_bytes()
        where = (f"ESR_MAX_MEMORY_MB={cap / 2**20:g}" if cap is not None and cap <= available + 1
                 else "the memory available")
        raise MemoryBudgetError(
            f"{h}x{w}: its input and {self.scale}x output images alone need {format_bytes(need)}, more than "
            f"the {format_bytes(available)} this run may use ({where}); raise ESR_MAX_MEMORY_MB or free "
            "memory")


def _writer_bytes(out_pixels: int, planes: int, out_bytes: int) -> int:
    """What ``write_image`` adds to the output array while it writes: Pillow's own image (1 byte
    per pixel for grey, 4 for grey+alpha, RGB and RGBA); for 16-bit, pypng's compressed stream
    and its copy (at most the raw size each, and once more with an ICC profile)."""
    if out_bytes > out_pixels * planes:  # 16-bit
        return 3 * out_bytes
    return out_pixels * (1 if planes == 1 else 4)


def _store(grey: bool, pixels: np.ndarray, oy: int, ox: int, block: torch.Tensor,
           alpha_of: Callable[[int, int, int, int], torch.Tensor] | None) -> None:
    """Quantise ``block`` ((3, bh, bw) float32 on the host: output rows oy.., columns ox..) as
    ``write_image`` would the whole (grey: the channels' mean; clamped; x255 or x65535, rounded)
    and store it, with the alpha of the same pixels (``alpha_of(oy, ox, bh, bw)``), into
    ``pixels`` ((sH, sW, C) uint8/uint16)."""
    if not torch.isfinite(block).all():
        # Clamping would turn Inf into white and leave NaN: never write that silently.
        raise ValueError("the output has NaN or Inf values (non-finite input pixels or weights?); "
                         "nothing written")
    bh, bw = block.shape[-2:]
    block.clamp_(0, 1)
    colour = block.mean(dim=0, keepdim=True) if grey else block
    c = colour.shape[0]
    pixels[oy:oy + bh, ox:ox + bw, :c] = _quantise(colour, pixels.dtype)
    if alpha_of is not None:
        pixels[oy:oy + bh, ox:ox + bw, c:] = _quantise(alpha_of(oy, ox, bh, bw), pixels.dtype)


def _quantise(planes: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """(C, h, w) float32 in [0, 1] (changed in place) -> (h, w, C) as ``write_image`` rounds it."""
    planes.clamp_(0, 1)
    if dtype == np.uint16:
        q = planes.mul_(65535.0).round_().to(torch.int32)
    else:
        q = planes.mul_(255.0).round_().to(torch.uint8)
    return q.permute(1, 2, 0).numpy()


def _alpha_pieces(alpha: torch.Tensor, scale: int) -> Callable[[int, int, int, int], torch.Tensor]:
    """``alpha_of(oy, ox, bh, bw)``: that piece of the bicubic x``scale`` resize of ``alpha``
    (1, H, W), clamped to [0, 1]. Resized piece by piece (``_alpha_block``) where the scale is a
    power of two (its source positions are exact in float, so pieces equal the whole resize);
    otherwise resized whole, once (4 bytes per output pixel)."""
    if scale & (scale - 1) == 0:
        return lambda oy, ox, bh, bw: _alpha_block(alpha, scale, oy, ox, bh, bw)
    whole = F.interpolate(alpha[None], scale_factor=scale, mode="bicubic", align_corners=False)[0].clamp_(0, 1)
    return lambda oy, ox, bh, bw: whole[:, oy:oy + bh, ox:ox + bw].clone()


def _alpha_block(alpha: torch.Tensor, scale: int, oy: int, ox: int, bh: int, bw: int) -> torch.Tensor:
    """Rows oy.. and columns ox.. (multiples of ``scale``) of the bicubic x``scale`` resize of
    ``alpha`` (1, H, W), clamped to [0, 1]: resized from the LR pixels they need plus a margin of
    2 (the cubic's reach), which gives exactly the whole-image resize's values (the same source
    positions and weights; the border replication only where the image ends). Alpha is a mask,
    not texture: a smooth resize avoids hallucinated edges."""
    _, h, w = alpha.shape
    r0, r1, c0, c1 = oy // scale, (oy + bh) // scale, ox // scale, (ox + bw) // scale
    a0, a1, b0, b1 = max(r0 - 2, 0), min(r1 + 2, h), max(c0 - 2, 0), min(c1 + 2, w)
    up = F.interpolate(alpha[None, :, a0:a1, b0:b1], scale_factor=scale, mode="bicubic", align_corners=False)[0]
    return up[:, (r0 - a0) * scale:(r1 - a0) * scale, (c0 - b0) * scale:(c1 - b0) * scale].clamp(0, 1)
