"""From an image to the model and back: device, dtype, tiling, alpha and grayscale."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from esr_kernels.errors import InvalidValueError

from ..io.images import Image
from .loading import min_input_size
from .memory import available_bytes, choose_tile
from .tiling import upscale_tiled

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Share of the available memory a forward may plan to use (the rest: the image itself, its
# output, the allocator's slack, other programs).
MEMORY_SHARE = 0.5


class Upscaler:
    """Runs ``model`` on float images in [0, 1].

    Args:
        model: an esr_models model (any device/dtype; it is moved to ``device``/``dtype``).
        tile: tile size in LR pixels, or None for whole-image inference.
        tile_overlap: LR pixels shared by neighbouring tiles.
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
        if tile is not None and tile < self.min_size:
            raise InvalidValueError(f"tile size {tile} is below the model's minimum input size {self.min_size}")
        if tile is not None and not 0 <= tile_overlap < tile:
            raise InvalidValueError(f"tile overlap must be in [0, tile size); got {tile_overlap} for tile {tile}")
        self.tile, self.tile_overlap = tile, tile_overlap
        self.auto_tile = auto_tile and tile is None
        self.notify = notify or (lambda msg: None)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(device=self.device, dtype=self.dtype)).float()

    def _tile_for(self, x: torch.Tensor) -> int | None:
        if not self.auto_tile:
            return self.tile
        n, _, h, w = x.shape
        budget = int(available_bytes(self.device) * MEMORY_SHARE)
        tile = choose_tile(self.model, n, h, w, self.dtype, budget, self.min_size)
        if tile is not None:
            self.notify(f"{h}x{w} does not fit in the {budget / 2**30:.1f} GiB available to one "
                        f"forward; tiling automatically with --tile {tile}")
        return tile

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float [0, 1] -> (N, 3, sH, sW) float32 on the model's device, unclamped."""
        tile = self._tile_for(x)
        if tile is None or (x.shape[-2] <= tile and x.shape[-1] <= tile):
            return self._run(x)
        # An automatic tile keeps a quarter of itself as overlap at most: a step of one pixel
        # (tile 16, overlap 15) would run a forward per pixel.
        overlap = self.tile_overlap if tile == self.tile else min(self.tile_overlap, tile // 4)
        return upscale_tiled(self._run, x, self.scale, tile, overlap)

    def upscale_image(self, img: Image) -> Image:
        sr = self(img.rgb[None])[0]
        if not torch.isfinite(sr).all():
            # Clamping would turn Inf into white and leave NaN: never write that silently.
            raise ValueError("the output has NaN or Inf values (non-finite input pixels or weights?); "
                             "nothing written")
        sr = sr.clamp(0, 1).cpu()
        alpha = None
        if img.alpha is not None:
            # Alpha is a mask, not texture: a smooth bicubic resize avoids hallucinated edges.
            alpha = F.interpolate(img.alpha[None], scale_factor=self.scale, mode="bicubic",
                                  align_corners=False)[0].clamp(0, 1)
        return _like(img, sr, alpha)


def _like(img: Image, rgb: torch.Tensor, alpha: torch.Tensor | None) -> Image:
    """``img`` with new pixels, keeping every other field (depth, grayscale, ICC profile...)."""
    import dataclasses

    return dataclasses.replace(img, rgb=rgb, alpha=alpha)
