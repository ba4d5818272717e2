"""Image files <-> tensors, keeping what users care about: 8- and 16-bit depth, alpha,
grayscale, EXIF orientation.

An ``Image`` holds ``rgb`` as float32 (3, H, W) in [0, 1] plus the facts needed to write the
result back in the same form.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class ImageReadError(ValueError):
    """A file could not be read as an image."""


@dataclass
class Image:
    rgb: torch.Tensor             # (3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None    # (1, H, W) float32 in [0, 1], or None
    bit_depth: int                # 8 or 16
    grayscale: bool               # source had one colour channel


def _png_bit_depth(path: Path) -> int:
    with open(path, "rb") as f:
        head = f.read(26)
    if head[:8] != b"\x89PNG\r\n\x1a\n" or len(head) < 26:
        return 8
    return head[24]


def _read_png16(path: Path) -> tuple[np.ndarray, int]:
    """(H, W, C) uint16 array and plane count, through pypng (Pillow truncates 16-bit RGB)."""
    import png

    width, height, rows, info = png.Reader(filename=str(path)).asDirect()
    planes = info["planes"]
    arr = np.vstack([np.asarray(r, dtype=np.uint16) for r in rows]).reshape(height, width, planes)
    return arr, planes


def _split(arr: np.ndarray, max_value: float) -> tuple[torch.Tensor, torch.Tensor | None, bool]:
    x = torch.from_numpy(arr.astype(np.float32) / max_value).permute(2, 0, 1).contiguous()
    channels = x.shape[0]
    gray = channels in (1, 2)
    alpha = x[-1:].clone() if channels in (2, 4) else None
    colour = x[:1].expand(3, -1, -1).contiguous() if gray else x[:3].contiguous()
    return colour, alpha, gray


def read_image(path: str | Path) -> Image:
    path = Path(path)
    try:
        if path.suffix.lower() == ".png" and _png_bit_depth(path) == 16:
            arr, _ = _read_png16(path)
            rgb, alpha, gray = _split(arr, 65535.0)
            return Image(rgb, alpha, 16, gray)
        with PILImage.open(path) as im:
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.uint16)[..., None] if im.mode != "I" else \
                    np.clip(np.asarray(im), 0, 65535).astype(np.uint16)[..., None]
                rgb, alpha, gray = _split(arr, 65535.0)
                return Image(rgb, alpha, 16, gray)
            has_alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
            gray = im.mode in ("L", "LA", "1")
            target = ("LA" if has_alpha else "L") if gray else ("RGBA" if has_alpha else "RGB")
            arr = np.asarray(im.convert(target))
        if arr.ndim == 2:
            arr = arr[..., None]
        rgb, alpha, gray = _split(arr, 255.0)
        return Image(rgb, alpha, 8, gray)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        raise ImageReadError(f"cannot read image {path}: {exc}") from exc
    except Exception as exc:  # pypng raises its own error types for corrupt files
        raise ImageReadError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 with clamping and round-half-to-even (numpy's and MATLAB's
    im2uint8 agree on all but exact halves, which float outputs practically never hit)."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def write_image(path: str | Path, img: Image) -> None:
    """Write ``img`` with its own depth, alpha and channel count. 16-bit output needs .png."""
    path = Path(path)
    planes = img.rgb.mean(dim=0, keepdim=True) if img.grayscale else img.rgb
    if img.alpha is not None:
        planes = torch.cat([planes, img.alpha], dim=0)
    planes = planes.clamp(0, 1)
    if img.bit_depth == 16:
        if path.suffix.lower() != ".png":
            raise ValueError(f"16-bit output needs a .png file name, got {path.name}")
        import png

        arr = (planes * 65535.0).round().to(torch.int32).permute(1, 2, 0).numpy().astype(np.uint16)
        h, w, c = arr.shape
        writer = png.Writer(width=w, height=h, bitdepth=16, greyscale=c in (1, 2), alpha=c in (2, 4))
        with open(path, "wb") as f:
            writer.write(f, arr.reshape(h, w * c).tolist())
        return
    arr = to_uint8(planes).permute(1, 2, 0).numpy()
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    if path.suffix.lower() in (".jpg", ".jpeg") and mode in ("LA", "RGBA"):
        raise ValueError(f"{path.name}: JPEG cannot store alpha; use .png")
    PILImage.fromarray(arr, mode=None).save(path)


def read_rgb_uint8(path: str | Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB, for evaluation on the standard 8-bit test sets."""
    with PILImage.open(path) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
