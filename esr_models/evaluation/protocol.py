"""The challenge's evaluation protocol (see ../shared/expected_psnr.json):
HR modcropped to a multiple of the scale; LR = MATLAB bicubic downscale of HR/255 rounded to
uint8; SR clamped to [0, 1] and rounded to uint8; PSNR on RGB in [0, 255] with a border of
``scale`` pixels cropped; mean over the images."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch

from ..images import IMAGE_SUFFIXES, read_rgb_uint8, to_uint8
from .imresize import imresize
from .metrics import psnr, ssim


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def make_lr(hr_uint8: torch.Tensor, scale: int) -> torch.Tensor:
    """(3, H, W) uint8 HR (already modcropped) -> (3, H/s, W/s) uint8 LR."""
    lr = imresize(hr_uint8.to(torch.float64) / 255.0, scale=1.0 / scale)
    return to_uint8(lr)


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"HR folder not found: {folder}")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def evaluate_images(files: list[Path], upscale: Callable[[torch.Tensor], torch.Tensor],
                    scale: int = 4, with_ssim: bool = True) -> Iterator[dict]:
    """Yield one record per image. ``upscale`` maps (1, 3, h, w) float [0, 1] to
    (1, 3, sh, sw) float in [0, 1] units."""
    for path in files:
        hr = modcrop(read_rgb_uint8(path), scale)
        lr = make_lr(hr, scale)
        with torch.inference_mode():
            sr = upscale(lr[None].float() / 255.0)[0]
        sr8 = to_uint8(sr.float().cpu())
        rec = {"image": path.name, "psnr": psnr(sr8, hr, border=scale),
               "psnr_y": psnr(sr8, hr, border=scale, y_channel=True)}
        if with_ssim:
            rec["ssim"] = ssim(sr8, hr, border=scale)
            rec["ssim_y"] = ssim(sr8, hr, border=scale, y_channel=True)
        yield rec


def summarise(records: list[dict]) -> dict:
    keys = [k for k in ("psnr", "psnr_y", "ssim", "ssim_y") if records and k in records[0]]
    return {k: sum(r[k] for r in records) / len(records) for k in keys}


def evaluate_folder(folder: str | Path, upscale: Callable[[torch.Tensor], torch.Tensor],
                    scale: int = 4, with_ssim: bool = True) -> dict:
    records = list(evaluate_images(list_images(folder), upscale, scale, with_ssim))
    return {**summarise(records), "per_image": records}
