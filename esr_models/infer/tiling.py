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


def blend_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int,
                overlap: int, emit: Callable[[int, int, torch.Tensor], None]) -> None:
    """Apply ``fn`` ((N, C, h, w) -> (N, C', s*h, s*w)) tile by tile over x (N, C, H, W) and hand
    the blended output to ``emit(oy, ox, block)`` piece by piece as soon as no later tile touches
    it: ``block`` is float32 (N, C', bh, bw) on fn's device, a fresh tensor the callee may change,
    for output rows oy..oy+bh and columns ox..ox+bw (multiples of ``scale``). The pieces tile the
    output exactly once, in row-major order.

    Memory: besides ``fn``'s own, two tile-sized accumulators and the rows shared with the next
    tile row (full width, ``carry_rows(...)`` LR rows): never the whole output. Each output pixel
    sums the same terms in the same order (tiles in row-major order, starting from zero) as a
    full-size accumulator would, so the result is bit-identical to that."""
    n, _, h, w = x.shape
    ys, xs = tile_starts(h, tile, overlap), tile_starts(w, tile, overlap)
    th, tw, s = min(tile, h), min(tile, w), scale
    ramp = overlap * s
    down = down_w = None  # sums so far of the rows this tile row shares with the previous one
    for i, y0 in enumerate(ys):
        ny = ys[i + 1] if i + 1 < len(ys) else h  # output rows above ny*s are final after this row
        wy = _ramp(th * s, ramp, y0 > 0, y0 + th < h)
        new_down = new_down_w = None
        right = right_w = None  # sums so far of the columns this tile shares with the previous one
        for j, x0 in enumerate(xs):
            nx = xs[j + 1] if j + 1 < len(xs) else w
            piece = fn(x[..., y0:y0 + th, x0:x0 + tw]).float()
            wx = _ramp(tw * s, ramp, x0 > 0, x0 + tw < w)
            mask = (wy[:, None] * wx[None, :]).to(piece.device)
            acc = torch.zeros_like(piece)
            acc_w = torch.zeros(1, 1, th * s, tw * s, device=piece.device)
            if down is not None:  # earlier tile rows first: they came first in row-major order
                rows = down.shape[-2]
                acc[..., :rows, :] = down[..., x0 * s:(x0 + tw) * s]
                acc_w[..., :rows, :] = down_w[..., x0 * s:(x0 + tw) * s]
            if right is not None:  # holds the earlier rows' sums too (it started from them)
                cols = right.shape[-1]
                acc[..., :cols] = right
                acc_w[..., :cols] = right_w
            acc += piece * mask
            acc_w += mask
            del piece
            er, ec = (ny - y0) * s, (nx - x0) * s
            emit(y0 * s, x0 * s, acc[..., :er, :ec] / acc_w[..., :er, :ec])
            right, right_w = acc[..., ec:], acc_w[..., ec:]
            if i + 1 < len(ys):
                if new_down is None:
                    new_down = torch.empty(n, acc.shape[1], th * s - er, w * s, device=acc.device)
                    new_down_w = torch.empty(1, 1, th * s - er, w * s, device=acc.device)
                # A later tile of this row overwrites the columns it shares: its sums include these.
                new_down[..., x0 * s:(x0 + tw) * s] = acc[..., er:, :]
                new_down_w[..., x0 * s:(x0 + tw) * s] = acc_w[..., er:, :]
        down, down_w = new_down, new_down_w


def carry_rows(length: int, tile: int, overlap: int) -> int:
    """The most LR rows ``blend_tiles`` keeps (full width) from one tile row for the next."""
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    return max((a + t - b for a, b in zip(starts, starts[1:])), default=0)


def upscale_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int,
                  tile: int, overlap: int) -> torch.Tensor:
    """Apply ``fn`` ((N, C, h, w) -> (N, C', s*h, s*w)) tile by tile over x (N, C, H, W) and
    return the blended (N, C', s*H, s*W) float32 result on x's device (``blend_tiles`` into one
    full-size tensor; for large images, consume the pieces instead)."""
    n, _, h, w = x.shape
    out = None

    def place(oy: int, ox: int, block: torch.Tensor) -> None:
        nonlocal out
        if out is None:
            out = torch.empty(n, block.shape[1], h * scale, w * scale, device=block.device)
        out[..., oy:oy + block.shape[-2], ox:ox + block.shape[-1]] = block

    blend_tiles(fn, x, scale, tile, overlap, place)
    return out
