"""Tiled inference for images too large to upscale at once.

Tiles overlap; each tile's output is weighted by a mask that ramps linearly across the
overlap on sides shared with a neighbour, and the weighted outputs are averaged. The ramps
hide the seams that the models' position-dependent attention (global pooling windows and
bilinear upsampling of a low-resolution map) would otherwise leave.
"""
from __future__ import annotations

from typing import Callable

import torch

from esr_kernels.errors import InvalidValueError


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with at least ``overlap``
    shared pixels; the last tile is aligned to the end so every tile is full size."""
    if length <= tile:
        return [0]
    step = tile - overlap
    if step <= 0:
        raise InvalidValueError(f"tile overlap ({overlap}) must be smaller than the tile size ({tile})")
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def _ramp(n: int, ramp: int, rising: bool, falling: bool) -> torch.Tensor:
    w = torch.ones(n, dtype=torch.float32)
    if ramp > 0:
        r = (torch.arange(ramp, dtype=torch.float32) + 0.5) / ramp
        if rising:
            w[:ramp] = torch.minimum(w[:ramp], r)
        if falling:
            w[n - ramp:] = torch.minimum(w[n - ramp:], r.flip(0))
    return w


def upscale_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
                  tile: int, overlap: int) -> torch.Tensor:
    """Apply ``fn`` ((N, C, h, w) -> (N, C', s*h, s*w)) tile by tile over x (N, C, H, W) and
    return the blended (N, C', s*H, s*W) float32 result on x's device."""
    n, _, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    out = weight = None
    for y0 in ys:
        for x0 in xs:
            th, tw = min(tile, h), min(tile, w)
            piece = fn(x[..., y0:y0 + th, x0:x0 + tw]).float()
            if out is None:
                out = torch.zeros(n, piece.shape[1], h * scale, w * scale, device=piece.device)
                weight = torch.zeros(1, 1, h * scale, w * scale, device=piece.device)
            ramp = overlap * scale
            wy = _ramp(th * scale, ramp, y0 > 0, y0 + th < h)
            wx = _ramp(tw * scale, ramp, x0 > 0, x0 + tw < w)
            mask = (wy[:, None] * wx[None, :]).to(piece.device)
            oy, ox = y0 * scale, x0 * scale
            out[..., oy:oy + th * scale, ox:ox + tw * scale] += piece * mask
            weight[..., oy:oy + th * scale, ox:ox + tw * scale] += mask
    return out / weight
