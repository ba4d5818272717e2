"""The challenge's evaluation protocol (see ../shared/expected_psnr.json):
HR modcropped to a multiple of the scale; LR = MATLAB bicubic downscale of HR/255 rounded to
uint8; SR clamped to [0, 1] and rounded to uint8; PSNR on RGB in [0, 255] with a border of
``scale`` pixels cropped; mean over the images."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import torch

from ..io.images import IMAGE_SUFFIXES, read_rgb_uint8, to_uint8
from .imresize import imresize
from .metrics import psnr, ssim


def modcrop(img: torch.Tensor, scale: int) -> torch.Tensor:
    h, w = img.shape[-2:]
    return img[..., : h - h % scale, : w - w % scale]


def make_lr(hr_uint8: torch.Tensor, scale: int) -> torch.Tensor:
    """(3, H, W) uint8 HR (already modcropped) -> (3, H/s, W/s) uint8 LR."""
    lr = imresize(hr_uint8.to(torch.float64) / 255.0, scale=1.0 / scale)
    return to_uint8(lr)


def list_images(folder: str | Path) -> tuple[list[Path], list[str]]:
    """(image files of ``folder`` by extension, notes on what was left out: sub-folders named
    like images, files with other extensions)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"HR folder not found: {folder}")
    entries = sorted(folder.iterdir())
    files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    notes = [f"{folder / name}: {why}; left out" for name, why in left_out_entries(folder)]
    others = [p for p in entries if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        notes.append(f"{folder}: {len(others)} file(s) without an image extension left out")
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files, notes


def left_out_entries(folder: str | Path) -> list[tuple[str, str]]:
    """(name, what it is) for every entry of ``folder`` named like an image that is not a
    regular file (or a link to one): folders, broken or looping links, FIFOs, sockets, devices."""
    import stat

    out = []
    for p in sorted(Path(folder).iterdir()):
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.is_file():
            continue
        try:
            mode = p.lstat().st_mode
        except OSError as exc:
            out.append((p.name, f"cannot be examined ({exc.strerror or exc})"))
            continue
        if stat.S_ISLNK(mode):
            why = "a symbolic link to a folder" if p.is_dir() else "a broken symbolic link"
        elif stat.S_ISDIR(mode):
            why = "a folder, not an image"
        elif stat.S_ISFIFO(mode):
            why = "a FIFO (named pipe), not an image file"
        elif stat.S_ISSOCK(mode):
            why = "a socket, not an image file"
        else:
            why = "not a regular file"
        out.append((p.name, why))
    return out


def evaluate_images(files: list[Path], upscale: Callable[[torch.Tensor], torch.Tensor],
                    scale: int = 4, with_ssim: bool = True, min_size: int = 1) -> Iterator[dict]:
    """Yield one record per image. ``upscale`` maps (1, 3, h, w) float [0, 1] to
    (1, 3, sh, sw) float in [0, 1] units. An image that cannot be evaluated (unreadable, LR
    below ``min_size``) yields ``{"image": name, "error": reason}`` and the rest go on."""
    for path in files:
        try:
            yield evaluate_image(path, upscale, scale, with_ssim, min_size)
        except (OSError, ValueError, SyntaxError, RuntimeError) as exc:  # Pillow's and the model's
            yield {"image": path.name, "error": str(exc) or type(exc).__name__}


def evaluate_image(path: Path, upscale: Callable[[torch.Tensor], torch.Tensor], scale: int = 4,
                   with_ssim: bool = True, min_size: int = 1) -> dict:
    hr = modcrop(read_rgb_uint8(path), scale)
    lr_h, lr_w = hr.shape[-2] // scale, hr.shape[-1] // scale
    if lr_h < min_size or lr_w < min_size:
        # Not named here: the record (and the command's line) names the image once.
        raise ValueError(f"its {hr.shape[-2]}x{hr.shape[-1]} HR makes a {lr_h}x{lr_w} LR, "
                         f"below the model's minimum input of {min_size}x{min_size}")
    lr = make_lr(hr, scale)
    with torch.inference_mode():
        sr = upscale(lr[None].float() / 255.0)[0]
    sr8 = to_uint8(sr.float().cpu())
    rec = {"image": path.name, "psnr": psnr(sr8, hr, border=scale),
           "psnr_y": psnr(sr8, hr, border=scale, y_channel=True)}
    if with_ssim:
        rec["ssim"] = ssim(sr8, hr, border=scale)
        rec["ssim_y"] = ssim(sr8, hr, border=scale, y_channel=True)
    return rec


def summarise(records: list[dict]) -> dict:
    """Means over the records that have scores (error records are left out)."""
    scored = [r for r in records if "error" not in r]
    keys = [k for k in ("psnr", "psnr_y", "ssim", "ssim_y") if scored and k in scored[0]]
    return {k: sum(r[k] for r in scored) / len(scored) for k in keys}


def evaluate_folder(folder: str | Path, upscale: Callable[[torch.Tensor], torch.Tensor],
                    scale: int = 4, with_ssim: bool = True, min_size: int = 1) -> dict:
    """Means over the folder's images, with ``per_image`` records, ``images`` (how many the
    means are over) and ``failed`` (error records)."""
    files, _ = list_images(folder)
    records = list(evaluate_images(files, upscale, scale, with_ssim, min_size))
    scored = [r for r in records if "error" not in r]
    return {**summarise(scored), "images": len(scored), "per_image": scored,
            "failed": [r for r in records if "error" in r]}
