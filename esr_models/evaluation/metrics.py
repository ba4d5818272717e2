"""PSNR and SSIM on [0, 255] images, the SR literature's conventions (BasicSR's)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma of [0, 255] RGB, as MATLAB's rgb2ycbcr (offset 16, studio range).
_Y_WEIGHTS = (65.481, 128.553, 24.966)


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 255] -> (..., 1, H, W) Y in [16, 235], float64."""
    w = torch.tensor(_Y_WEIGHTS, dtype=torch.float64, device=img.device).view(3, 1, 1)
    return ((img.to(torch.float64) / 255.0) * w).sum(dim=-3, keepdim=True) + 16.0


def _crop(img: torch.Tensor, border: int) -> torch.Tensor:
    return img[..., border:img.shape[-2] - border, border:img.shape[-1] - border] if border else img


def psnr(a: torch.Tensor, b: torch.Tensor, border: int = 0, y_channel: bool = False) -> float:
    """PSNR in dB between two (C, H, W) images in [0, 255] (uint8 or float)."""
    if a.shape != b.shape:
        raise ValueError(f"psnr: shapes differ {tuple(a.shape)} vs {tuple(b.shape)}")
    a, b = a.to(torch.float64), b.to(torch.float64)
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    mse = torch.mean((_crop(a, border) - _crop(b, border)) ** 2).item()
    return float("inf") if mse == 0 else 10.0 * torch.log10(torch.tensor(255.0 ** 2 / mse)).item()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g)


def ssim(a: torch.Tensor, b: torch.Tensor, border: int = 0, y_channel: bool = False) -> float:
    """Mean SSIM (Wang et al. 2004: 11x11 Gaussian, sigma 1.5, 'valid' window) between two
    (C, H, W) images in [0, 255]; per channel, then averaged."""
    a, b = a.to(torch.float64), b.to(torch.float64)
    if y_channel:
        a, b = rgb_to_y(a), rgb_to_y(b)
    a, b = _crop(a, border)[:, None], _crop(b, border)[:, None]
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    win = _gaussian_window().to(a.device)[None, None]
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a ** 2
    var_b = F.conv2d(b * b, win) - mu_b ** 2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean().item()
