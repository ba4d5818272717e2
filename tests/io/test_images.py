"""Image files: depth, alpha, grayscale and EXIF orientation survive the round trip."""
from __future__ import annotations

import numpy as np
import png
import pytest
import torch
from PIL import Image as PILImage

from esr_models.io.images import Image, ImageReadError, read_image, write_image


def test_16bit_rgb_png_keeps_full_precision(tmp_path):
    arr = np.random.default_rng(0).integers(0, 65536, size=(9, 7, 3), dtype=np.uint16)
    path = tmp_path / "deep.png"
    png.from_array(arr.reshape(9, 21), mode="RGB;16").save(str(path))
    img = read_image(path)
    assert img.bit_depth == 16 and img.alpha is None and not img.grayscale
    assert np.array_equal((img.rgb.permute(1, 2, 0).numpy() * 65535).round().astype(np.uint16), arr)
    out = tmp_path / "out.png"
    write_image(out, img)
    back = read_image(out)
    assert back.bit_depth == 16 and torch.equal(back.rgb, img.rgb)


def test_rgba_alpha_is_kept_separately(tmp_path):
    arr = np.random.default_rng(1).integers(0, 256, size=(6, 5, 4), dtype=np.uint8)
    path = tmp_path / "a.png"
    PILImage.fromarray(arr, "RGBA").save(path)
    img = read_image(path)
    assert img.alpha is not None and img.alpha.shape == (1, 6, 5)
    assert torch.equal((img.alpha[0] * 255).round().to(torch.uint8), torch.from_numpy(arr[..., 3]))
    write_image(tmp_path / "b.png", img)
    assert np.array_equal(np.asarray(PILImage.open(tmp_path / "b.png")), arr)


def test_grayscale_stays_grayscale(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, size=(8, 8), dtype=np.uint8)
    PILImage.fromarray(arr, "L").save(tmp_path / "g.png")
    img = read_image(tmp_path / "g.png")
    assert img.grayscale and img.rgb.shape == (3, 8, 8)
    write_image(tmp_path / "g2.png", img)
    out = PILImage.open(tmp_path / "g2.png")
    assert out.mode == "L" and np.array_equal(np.asarray(out), arr)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((4, 6, 3), dtype=np.uint8)
    arr[0, 0] = 255  # marks the top-left corner
    im = PILImage.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 CW to display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    img = read_image(tmp_path / "r.jpg")
    assert img.rgb.shape == (3, 6, 4)
    assert img.rgb[:, 0, -1].mean() > 0.8  # top-left moved to top-right


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 40])
def test_corrupt_files_raise_a_named_error(tmp_path, content):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="bad.png"):
        read_image(path)


def test_16bit_needs_png(tmp_path):
    img = Image(torch.rand(3, 4, 4), None, 16, False)
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "x.jpg", img)
