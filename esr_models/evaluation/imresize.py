"""MATLAB ``imresize(..., 'bicubic')`` in PyTorch: cubic kernel a = -0.5, antialiased when
downscaling (the kernel is stretched by 1/scale), symmetric (edge-including) border handling.

Each axis is a dense (out x in) weight matrix applied by matmul in float64, which is exact
enough that rounding to uint8 matches MATLAB.
"""
from __future__ import annotations

import math

import torch

CUBIC_A = -0.5
CUBIC_SUPPORT = 4.0


def cubic(x: torch.Tensor, a: float = CUBIC_A) -> torch.Tensor:
    ax = x.abs()
    ax2, ax3 = ax * ax, ax * ax * ax
    near = ((a + 2) * ax3 - (a + 3) * ax2 + 1) * (ax <= 1)
    far = (a * ax3 - 5 * a * ax2 + 8 * a * ax - 4 * a) * ((ax > 1) & (ax <= 2))
    return near + far


def resize_matrix(in_len: int, out_len: int, scale: float, antialias: bool = True) -> torch.Tensor:
    """(out_len, in_len) float64 matrix M such that out = M @ in along one axis."""
    shrink = antialias and scale < 1
    width = CUBIC_SUPPORT / scale if shrink else CUBIC_SUPPORT
    out_pos = torch.arange(1, out_len + 1, dtype=torch.float64)
    # Output pixel centre mapped into input coordinates (1-based, MATLAB's convention).
    centre = out_pos / scale + 0.5 * (1 - 1 / scale)
    left = torch.floor(centre - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64)[None, :]
    dist = centre[:, None] - idx
    w = scale * cubic(dist * scale) if shrink else cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # Symmetric padding: index -1 maps to 0, in_len maps to in_len - 1.
    period = torch.cat([torch.arange(in_len), torch.arange(in_len - 1, -1, -1)])
    src = period[torch.remainder(idx.long() - 1, 2 * in_len)]
    m = torch.zeros(out_len, in_len, dtype=torch.float64)
    m.scatter_add_(1, src, w)
    return m


def imresize(img: torch.Tensor, scale: float | None = None,
             size: tuple[int, int] | None = None, antialias: bool = True) -> torch.Tensor:
    """Resize (..., H, W) float image like MATLAB's bicubic imresize. Give ``scale`` or ``size``
    (out H, out W). Returns float64; the caller rounds/clamps as its convention says."""
    h, w = img.shape[-2:]
    if size is None:
        if scale is None:
            raise ValueError("imresize needs scale or size")
        size = (math.ceil(h * scale), math.ceil(w * scale))
        sh = sw = scale
    else:
        sh, sw = size[0] / h, size[1] / w
    x = img.to(torch.float64)
    mh = resize_matrix(h, size[0], sh, antialias).to(x.device)
    mw = resize_matrix(w, size[1], sw, antialias).to(x.device)
    # MATLAB resizes the dimension with the smaller scale first; the order only moves float64
    # rounding, but keep it for bit-compatibility of the uint8 result.
    if sh <= sw:
        return torch.matmul(mh @ x, mw.T)
    return mh @ torch.matmul(x, mw.T)
