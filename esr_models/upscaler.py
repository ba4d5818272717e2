"""From an image to the model and back: device, dtype, tiling, alpha and grayscale."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .images import Image
from .loading import min_input_size
from .tiling import upscale_tiled

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class Upscaler:
    """Runs ``model`` on float images in [0, 1].

    Args:
        model: an esr_models model (any device/dtype; it is moved to ``device``/``dtype``).
        tile: tile size in LR pixels, or None for whole-image inference.
        tile_overlap: LR pixels shared by neighbouring tiles.
    """

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, tile: int | None = None, tile_overlap: int = 16):
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        self.scale = int(getattr(model, "scale", 4))
        self.min_size = min_input_size(model)
        if tile is not None and tile < self.min_size:
            raise ValueError(f"tile size {tile} is below the model's minimum input size {self.min_size}")
        if tile is not None and not 0 <= tile_overlap < tile:
            raise ValueError(f"tile overlap must be in [0, tile size); got {tile_overlap} for tile {tile}")
        self.tile, self.tile_overlap = tile, tile_overlap

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(device=self.device, dtype=self.dtype)).float()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float [0, 1] -> (N, 3, sH, sW) float32 on the model's device, unclamped."""
        if self.tile is None or (x.shape[-2] <= self.tile and x.shape[-1] <= self.tile):
            return self._run(x)
        return upscale_tiled(self._run, x, self.scale, self.tile, self.tile_overlap)

    def upscale_image(self, img: Image) -> Image:
        sr = self(img.rgb[None])[0].clamp(0, 1).cpu()
        alpha = None
        if img.alpha is not None:
            # Alpha is a mask, not texture: a smooth bicubic resize avoids hallucinated edges.
            alpha = F.interpolate(img.alpha[None], scale_factor=self.scale, mode="bicubic",
                                  align_corners=False)[0].clamp(0, 1)
        return Image(sr, alpha, img.bit_depth, img.grayscale)
