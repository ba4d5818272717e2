"""The per-mode rule of esr_models.io.images: what read_image returns for every mode Pillow
opens (and the PNGs pypng decodes), and what write_image writes back."""
from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import png
import pytest
import torch
from PIL import Image as PILImage
from PIL import ImageCms, ImageOps

from esr_models.io import images
from esr_models.io.images import (DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES, Image, ImageReadError,
                               read_image, write_image)

H, W = 5, 7
RNG = np.random.default_rng(42)


def _u8(*shape):
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _u16(*shape):
    return RNG.integers(0, 65536, size=shape, dtype=np.uint16)


def _pypng(path, arr, bitdepth, **kw):
    """Write (H, W, C) ``arr`` with pypng at ``bitdepth``."""
    h, w, c = arr.shape
    with open(path, "wb") as f:
        png.Writer(w, h, bitdepth=bitdepth, greyscale=c in (1, 2), alpha=c in (2, 4), **kw).write(
            f, arr.reshape(h, w * c).tolist())


def _insert_chunk(path, ctype: bytes, data: bytes):
    """Insert a chunk right after IHDR (pypng computes the CRC)."""
    chunks = list(png.Reader(bytes=path.read_bytes()).chunks())
    chunks.insert(1, (ctype, data))
    buf = io.BytesIO()
    png.write_chunks(buf, chunks)
    path.write_bytes(buf.getvalue())


def _opened(path, what="mode"):
    """An attribute of the file as Pillow opens it (the file is closed again)."""
    with PILImage.open(path) as im:
        return im.info if what == "info" else im.getexif() if what == "exif" else im.mode


def _srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _with_space(profile: bytes, space: bytes) -> bytes:
    """The profile with its colour-space signature replaced (enough for the keep/drop rule)."""
    return profile[:16] + space + profile[20:]


# Each case writes a file and returns (path, expected): rgb (H, W, 3) float, alpha (H, W) or
# None, grayscale, bit_depth, the written PNG as (planes, bitdepth), and the read tolerance.

def case_mode_1(tmp):
    a = RNG.integers(0, 2, size=(H, W)).astype(bool)
    p = tmp / "m1.tif"
    PILImage.fromarray(a).save(p)
    assert _opened(p) == "1"
    v = a.astype(np.float32)
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=None, gray=True, depth=8, out=(1, 8))


def case_mode_1_png_key(tmp):  # 1-bit grey PNG with tRNS: pypng path, 8-bit output with alpha
    a = RNG.integers(0, 2, size=(H, W, 1)).astype(np.uint8)
    p = tmp / "m1k.png"
    _pypng(p, a, 1, transparent=1)
    v = a[..., 0].astype(np.float32)
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=(a[..., 0] != 1).astype(np.float32),
                   gray=True, depth=8, out=(2, 8))


def case_grey2_png_key(tmp):  # 2-bit grey + tRNS: Pillow would compare the key unscaled
    a = RNG.integers(0, 4, size=(H, W, 1)).astype(np.uint8)
    a[0, 0] = 2
    p = tmp / "g2k.png"
    _pypng(p, a, 2, transparent=2)
    v = a[..., 0].astype(np.float32) / 3
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=(a[..., 0] != 2).astype(np.float32),
                   gray=True, depth=8, out=(2, 8))


def case_L(tmp):
    a = _u8(H, W)
    p = tmp / "l.png"
    PILImage.fromarray(a, "L").save(p)
    v = a / 255
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=None, gray=True, depth=8, out=(1, 8))


def case_L_trns(tmp):
    a = _u8(H, W)
    a[1, 2] = a[3, 3] = 77
    p = tmp / "lt.png"
    PILImage.fromarray(a, "L").save(p, transparency=77)
    assert _opened(p, "info")["transparency"] == 77
    v = a / 255
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=(a != 77).astype(np.float32),
                   gray=True, depth=8, out=(2, 8))


def case_LA(tmp):
    a = _u8(H, W, 2)
    p = tmp / "la.png"
    PILImage.fromarray(a, "LA").save(p)
    v = a[..., 0] / 255
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=a[..., 1] / 255, gray=True, depth=8,
                   out=(2, 8))


def case_LA_tiff(tmp):
    a = _u8(H, W, 2)
    p = tmp / "la.tif"
    PILImage.fromarray(a, "LA").save(p)
    assert _opened(p) == "LA"
    v = a[..., 0] / 255
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=a[..., 1] / 255, gray=True, depth=8,
                   out=(2, 8))


def _palette_image():
    idx = RNG.integers(0, 4, size=(H, W)).astype(np.uint8)
    pal = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]], dtype=np.uint8)
    im = PILImage.fromarray(idx, "P")
    im.putpalette(pal.reshape(-1).tolist())
    return im, idx, pal


def case_P(tmp):
    im, idx, pal = _palette_image()
    p = tmp / "p.png"
    im.save(p)
    assert _opened(p) == "P"
    return p, dict(rgb=pal[idx] / 255, alpha=None, gray=False, depth=8, out=(3, 8))


def case_P_trns_table(tmp):  # partial alpha per palette index
    im, idx, pal = _palette_image()
    table = bytes([0, 128, 255, 40])
    p = tmp / "pt.png"
    im.save(p, transparency=table)
    assert _opened(p, "info")["transparency"] == table
    return p, dict(rgb=pal[idx] / 255, alpha=np.frombuffer(table, np.uint8)[idx] / 255,
                   gray=False, depth=8, out=(4, 8))


def case_gif_transparency(tmp):  # GIF: one transparent palette index
    im, idx, pal = _palette_image()
    p = tmp / "t.gif"
    im.save(p, transparency=1)
    assert _opened(p) == "P" and _opened(p, "info")["transparency"] == 1
    return p, dict(rgb=pal[idx] / 255, alpha=(idx != 1).astype(np.float32), gray=False, depth=8,
                   out=(4, 8))


def case_RGB(tmp):
    a = _u8(H, W, 3)
    p = tmp / "rgb.png"
    PILImage.fromarray(a, "RGB").save(p)
    return p, dict(rgb=a / 255, alpha=None, gray=False, depth=8, out=(3, 8))


def case_RGB_trns(tmp):
    a = _u8(H, W, 3)
    key = (10, 200, 30)
    a[0, 0] = a[4, 6] = key
    a[2, 2] = (10, 200, 31)  # differs in one channel only: stays opaque
    p = tmp / "rgbt.png"
    PILImage.fromarray(a, "RGB").save(p, transparency=key)
    alpha = np.ones((H, W), np.float32)
    alpha[0, 0] = alpha[4, 6] = 0
    return p, dict(rgb=a / 255, alpha=alpha, gray=False, depth=8, out=(4, 8))


def case_RGBA(tmp):
    a = _u8(H, W, 4)
    p = tmp / "rgba.png"
    PILImage.fromarray(a, "RGBA").save(p)
    return p, dict(rgb=a[..., :3] / 255, alpha=a[..., 3] / 255, gray=False, depth=8, out=(4, 8))


def case_I16_png(tmp):
    a = _u16(H, W, 1)
    p = tmp / "g16.png"
    _pypng(p, a, 16)
    assert _opened(p) == "I;16"
    v = a[..., 0] / 65535
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=None, gray=True, depth=16, out=(1, 16))


def case_I16_png_trns(tmp):
    a = _u16(H, W, 1)
    a[2, 3] = 4321
    p = tmp / "g16t.png"
    _pypng(p, a, 16, transparent=4321)
    v = a[..., 0] / 65535
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=(a[..., 0] != 4321).astype(np.float32),
                   gray=True, depth=16, out=(2, 16))


def case_I16_tiff(tmp):
    a = _u16(H, W)
    p = tmp / "g16.tif"
    PILImage.fromarray(a).save(p)
    assert _opened(p).startswith("I;16")
    v = a / 65535
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=None, gray=True, depth=16, out=(1, 16))


def case_I32_tiff(tmp):  # rule: clip to [0, 65535], read as 16-bit
    a = RNG.integers(0, 65536, size=(H, W)).astype(np.int32)
    a[0, 0], a[0, 1] = -5, 70000
    p = tmp / "i32.tif"
    PILImage.fromarray(a).save(p)
    assert _opened(p) == "I"
    v = np.clip(a, 0, 65535) / 65535
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=None, gray=True, depth=16, out=(1, 16),
                   note="2 pixel values outside [0, 65535] were clipped")


def case_F_tiff(tmp):  # rule: values as-is in [0, 1] (clipped), written as 16-bit
    a = RNG.random((H, W), dtype=np.float32)
    a[0, 0], a[1, 1] = 1.5, -0.25
    p = tmp / "f.tif"
    PILImage.fromarray(a).save(p)
    assert _opened(p) == "F"
    v = np.clip(a, 0, 1)
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=None, gray=True, depth=16, out=(1, 16),
                   note="2 pixel values outside [0, 1] were clipped", round_trip_atol=0.5 / 65535 + 1e-7)


def _converted(p):
    with PILImage.open(p) as im:
        return np.asarray(im.convert("RGB")) / 255


def case_CMYK_jpeg(tmp):
    a = _u8(H, W, 4)
    p = tmp / "cmyk.jpg"
    PILImage.fromarray(a, "CMYK").save(p, quality=95)
    assert _opened(p) == "CMYK"
    return p, dict(rgb=_converted(p), alpha=None, gray=False, depth=8, out=(3, 8))


def case_CMYK_tiff(tmp):
    a = _u8(H, W, 4)
    p = tmp / "cmyk.tif"
    PILImage.fromarray(a, "CMYK").save(p)
    assert _opened(p) == "CMYK"
    # Pillow's own conversion of the stored values (no colour management), ~(255-C)(255-K)/255
    rgb = np.asarray(PILImage.fromarray(a, "CMYK").convert("RGB")).astype(int)
    assert np.abs(rgb - (255 - a[..., :3].astype(int)) * (255 - a[..., 3:4]) / 255).max() <= 1
    return p, dict(rgb=rgb / 255, alpha=None, gray=False, depth=8, out=(3, 8))


def case_YCbCr_tiff(tmp):
    a = _u8(H, W, 3)
    p = tmp / "ycc.tif"
    PILImage.fromarray(a, "YCbCr").save(p)
    assert _opened(p) == "YCbCr"
    return p, dict(rgb=np.asarray(PILImage.fromarray(a, "YCbCr").convert("RGB")) / 255,
                   alpha=None, gray=False, depth=8, out=(3, 8))


def case_RGB16_png(tmp):
    a = _u16(H, W, 3)
    p = tmp / "rgb16.png"
    _pypng(p, a, 16)
    return p, dict(rgb=a / 65535, alpha=None, gray=False, depth=16, out=(3, 16))


def case_RGB16_png_trns(tmp):
    a = _u16(H, W, 3)
    key = (1, 2, 3)
    a[4, 0] = key
    p = tmp / "rgb16t.png"
    _pypng(p, a, 16, transparent=key)
    return p, dict(rgb=a / 65535, alpha=(~np.all(a == key, axis=2)).astype(np.float32),
                   gray=False, depth=16, out=(4, 16))


def case_RGBA16_png(tmp):
    a = _u16(H, W, 4)
    p = tmp / "rgba16.png"
    _pypng(p, a, 16)
    return p, dict(rgb=a[..., :3] / 65535, alpha=a[..., 3] / 65535, gray=False, depth=16,
                   out=(4, 16))


def case_GA16_png(tmp):
    a = _u16(H, W, 2)
    p = tmp / "ga16.png"
    _pypng(p, a, 16)
    v = a[..., 0] / 65535
    return p, dict(rgb=np.repeat(v[..., None], 3, 2), alpha=a[..., 1] / 65535, gray=True,
                   depth=16, out=(2, 16))


def case_12bit_sbit_png(tmp):  # pypng writes 12-bit as 16-bit + sBIT; scale is 4095
    a = RNG.integers(0, 4096, size=(H, W, 3)).astype(np.uint16)
    p = tmp / "rgb12.png"
    _pypng(p, a, 12)
    return p, dict(rgb=a / 4095, alpha=None, gray=False, depth=16, out=(3, 16),
                   round_trip_atol=0.5 / 65535 + 1e-7)


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}


@pytest.mark.parametrize("name", sorted(CASES))
def test_mode_is_read_by_the_rule_and_written_back(tmp_path, name):
    path, exp = CASES[name](tmp_path)
    img = read_image(path)
    assert img.rgb.dtype == torch.float32 and img.rgb.shape == (3, H, W)
    assert img.grayscale is exp["gray"] and img.bit_depth == exp["depth"]
    np.testing.assert_allclose(img.rgb.permute(1, 2, 0).numpy(), exp["rgb"], atol=1e-6)
    if exp["alpha"] is None:
        assert img.alpha is None
    else:
        assert img.alpha is not None and img.alpha.dtype == torch.float32
        assert img.alpha.shape == (1, H, W)
        np.testing.assert_allclose(img.alpha[0].numpy(), exp["alpha"], atol=1e-6)
    if "note" in exp:
        assert any(exp["note"] in n and str(path) in n for n in img.notes), img.notes
    else:
        assert img.notes == []

    out = tmp_path / "out.png"
    write_image(out, img)
    _, _, _, info = png.Reader(bytes=out.read_bytes()).read()
    assert (info["planes"], info["bitdepth"]) == exp["out"]
    back = read_image(out)
    assert back.grayscale is img.grayscale and back.bit_depth == img.bit_depth
    # 8-bit and 16-bit sources survive exactly; values between 16-bit steps (float, 12-bit)
    # move by at most half a step.
    atol = exp.get("round_trip_atol", 1e-6)
    np.testing.assert_allclose(back.rgb.numpy(), img.rgb.numpy(), atol=atol, rtol=0)
    assert (back.alpha is None) == (img.alpha is None)
    if img.alpha is not None:
        np.testing.assert_allclose(back.alpha.numpy(), img.alpha.numpy(), atol=atol, rtol=0)


# ---------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_on_8_and_16_bit(tmp_path, orientation):
    a = _u8(4, 6, 3)
    im = PILImage.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    p8 = tmp_path / "o8.png"
    im.save(p8, exif=exif)
    with PILImage.open(p8) as im8:
        want = np.asarray(ImageOps.exif_transpose(im8)) / 255
    got8 = read_image(p8)
    np.testing.assert_allclose(got8.rgb.permute(1, 2, 0).numpy(), want, atol=1e-6)

    # The same picture as a 16-bit PNG (pypng path) with an eXIf chunk of the same content.
    p16 = tmp_path / "o16.png"
    _pypng(p16, a.astype(np.uint16) * 257, 16)
    _insert_chunk(p16, b"eXIf", exif.tobytes())
    assert _opened(p16, "exif").get(0x0112) == orientation  # Pillow sees it too
    got16 = read_image(p16)
    assert got16.bit_depth == 16
    np.testing.assert_allclose(got16.rgb.permute(1, 2, 0).numpy(), want, atol=1e-6)


def test_16bit_png_with_exif_orientation_6_is_rotated(tmp_path):
    a = np.zeros((4, 6, 4), dtype=np.uint16)
    a[..., 3] = 65535
    a[0, 0, :3] = 65535  # marks the top-left corner
    a[0, 0, 3] = 1000     # alpha rotates with it
    p = tmp_path / "r16.png"
    _pypng(p, a, 16)
    exif = PILImage.Exif()
    exif[0x0112] = 6
    _insert_chunk(p, b"eXIf", exif.tobytes())
    assert _opened(p, "exif").get(0x0112) == 6
    img = read_image(p)
    assert img.rgb.shape == (3, 6, 4) and img.alpha.shape == (1, 6, 4)
    assert img.rgb[:, 0, -1].min() == 1.0  # top-left moved to top-right
    assert abs(img.alpha[0, 0, -1].item() - 1000 / 65535) < 1e-7


# ---------------------------------------------------------------------------- ICC profiles


def _icc_of(path):
    with PILImage.open(path) as im:
        return im.info.get("icc_profile")


@pytest.mark.parametrize("kind", ["png8", "jpeg", "png16"])
def test_icc_profile_survives_the_round_trip(tmp_path, kind):
    prof = _srgb_profile()
    a = _u8(H, W, 3)
    if kind == "png8":
        p = tmp_path / "c.png"
        PILImage.fromarray(a).save(p, icc_profile=prof)
    elif kind == "jpeg":
        p = tmp_path / "c.jpg"
        PILImage.fromarray(a).save(p, icc_profile=prof, quality=95)
    else:
        p = tmp_path / "c16.png"
        _pypng(p, a.astype(np.uint16) * 257, 16)
        _insert_chunk(p, b"iCCP", b"sRGB\0\0" + zlib.compress(prof))
        assert _icc_of(p) == prof
    img = read_image(p)
    assert img.icc_profile == prof and img.notes == []
    out = tmp_path / "out.png"
    write_image(out, img)
    assert _icc_of(out) == prof
    list(png.Reader(bytes=out.read_bytes()).read()[2])  # pypng checks every CRC: the new chunk too
    assert read_image(out).icc_profile == prof


def test_icc_on_16bit_written_image(tmp_path):
    prof = _srgb_profile()
    img = Image(torch.rand(3, 4, 5), torch.rand(1, 4, 5), 16, False, icc_profile=prof)
    write_image(tmp_path / "x.png", img)
    back = read_image(tmp_path / "x.png")
    assert back.icc_profile == prof and back.bit_depth == 16 and back.alpha is not None


def test_grey_profile_kept_for_grey_16bit(tmp_path):
    prof = _with_space(_srgb_profile(), b"GRAY")
    p = tmp_path / "g.png"
    _pypng(p, _u16(H, W, 1), 16)
    _insert_chunk(p, b"iCCP", b"g\0\0" + zlib.compress(prof))
    img = read_image(p)
    assert img.grayscale and img.icc_profile == prof
    write_image(tmp_path / "o.png", img)
    assert _icc_of(tmp_path / "o.png") == prof


def test_profile_of_another_colour_space_is_dropped_with_a_note(tmp_path):
    prof = _with_space(_srgb_profile(), b"CMYK")
    p = tmp_path / "cmyk.tif"
    PILImage.fromarray(_u8(H, W, 4), "CMYK").save(p, icc_profile=prof)
    img = read_image(p)
    assert img.icc_profile is None
    assert any("CMYK" in n and "dropped" in n for n in img.notes), img.notes


def test_write_skips_a_mismatched_profile_with_a_warning(tmp_path):
    img = Image(torch.rand(3, 4, 4), None, 8, True, icc_profile=_srgb_profile())
    with pytest.warns(UserWarning, match="ICC"):
        write_image(tmp_path / "g.png", img)
    assert _icc_of(tmp_path / "g.png") is None


# ---------------------------------------------------------------------------- frames


def _frames(n):
    return [PILImage.fromarray(np.full((H, W, 3), 40 * i, np.uint8)) for i in range(n)]


@pytest.mark.parametrize("fmt,kind", [("gif", "animated"), ("png", "animated"),
                                      ("webp", "animated"), ("tif", "multi-page")])
def test_multi_frame_files_note_that_only_the_first_frame_is_used(tmp_path, fmt, kind):
    p = tmp_path / f"anim.{fmt}"
    first, *rest = _frames(3)
    extra = {"lossless": True} if fmt == "webp" else {}
    first.save(p, save_all=True, append_images=rest, **extra)
    img = read_image(p)
    assert img.rgb.shape == (3, H, W) and float(img.rgb.max()) == 0.0  # frame 0 is black
    assert img.notes == [f"{p}: {kind} image with 3 frames; only the first frame is upscaled"]


def test_16bit_apng_frame_count_is_noted(tmp_path):
    p = tmp_path / "a16.png"
    _pypng(p, _u16(H, W, 3), 16)
    _insert_chunk(p, b"acTL", struct.pack(">II", 4, 0))
    assert read_image(p).notes == [f"{p}: animated image with 4 frames; only the first frame is upscaled"]


def test_new_fields_default_and_are_not_shared():
    a = Image(torch.zeros(3, 1, 1), None, 8, False)
    b = Image(torch.zeros(3, 1, 1), None, 8, False)
    assert a.icc_profile is None and a.notes == [] and a.notes is not b.notes


# ---------------------------------------------------------------------------- size limit


def _bomb_png(path, width, height, bitdepth=16):
    """A tiny PNG whose IHDR claims width x height RGB at ``bitdepth``; IDAT holds one row."""
    ihdr = struct.pack(">IIBBBBB", width, height, bitdepth, 2, 0, 0, 0)
    row = b"\0" + b"\0" * (width * 3 * bitdepth // 8)
    buf = io.BytesIO()
    png.write_chunks(buf, [(b"IHDR", ihdr), (b"IDAT", zlib.compress(row * 4, 9)), (b"IEND", b"")])
    path.write_bytes(buf.getvalue())


def test_default_limit_is_pillows():
    assert DEFAULT_MAX_PIXELS == 89_478_485 == PILImage.MAX_IMAGE_PIXELS


@pytest.mark.parametrize("bitdepth", [16, 8])
def test_png_bomb_is_refused_from_its_header(tmp_path, bitdepth):
    p = tmp_path / "bomb.png"
    _bomb_png(p, 13500, 13500, bitdepth)
    assert p.stat().st_size < 1_000_000
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ImageReadError) as err:
            read_image(p)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    msg = str(err.value)
    for part in ("bomb.png", "13500x13500", "182,250,000", "89,478,485", "--max-pixels"):
        assert part in msg, msg
    assert elapsed < 2.0 and peak < 20_000_000, (elapsed, peak)


def test_pillow_path_honours_a_stricter_limit(tmp_path):
    p = tmp_path / "small.jpg"
    PILImage.fromarray(_u8(20, 30, 3)).save(p)
    with pytest.raises(ImageReadError, match=r"small\.jpg.*30x20 = 600 pixels.*limit of 599"):
        read_image(p, max_pixels=599)
    assert read_image(p, max_pixels=600).rgb.shape == (3, 20, 30)


def test_pillow_path_honours_a_looser_limit_and_none(tmp_path, monkeypatch):
    p = tmp_path / "big.tif"
    PILImage.fromarray(_u8(20, 30, 3)).save(p)
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 50)  # Pillow alone would refuse 600 px
    with pytest.raises(PILImage.DecompressionBombError):
        _opened(p)
    assert read_image(p, max_pixels=None).rgb.shape == (3, 20, 30)
    assert read_image(p, max_pixels=1000).rgb.shape == (3, 20, 30)
    assert PILImage.MAX_IMAGE_PIXELS == 50  # restored after each read


def test_16bit_limit_can_be_lifted(tmp_path):
    p = tmp_path / "d.png"
    _pypng(p, _u16(4, 4, 3), 16)
    with pytest.raises(ImageReadError, match="16 pixels"):
        read_image(p, max_pixels=15)
    assert read_image(p, max_pixels=None).bit_depth == 16


# ---------------------------------------------------------------------------- errors


def test_float_tiff_with_nan_or_inf_is_refused(tmp_path):
    for bad in (np.nan, np.inf):
        a = np.full((3, 3), 0.5, np.float32)
        a[1, 1] = bad
        p = tmp_path / "nan.tif"
        PILImage.fromarray(a).save(p)
        with pytest.raises(ImageReadError, match=r"nan\.tif.*contains NaN/Inf pixels \(1 of 9\)"):
            read_image(p)


def test_pypng_error_names_its_type_once(tmp_path):
    p = tmp_path / "crc.png"
    _pypng(p, _u16(4, 4, 3), 16)
    data = bytearray(p.read_bytes())
    i = data.index(b"IDAT")
    data[i + 6] ^= 0xFF  # corrupt the compressed data: the CRC no longer matches
    p.write_bytes(bytes(data))
    with pytest.raises(ImageReadError) as err:
        read_image(p)
    msg = str(err.value)
    assert "crc.png" in msg
    name = msg.split(": ")[1]
    assert name.endswith("Error") and msg.count(name) == 1, msg


def test_unsupported_conversion_reports_the_file(tmp_path, monkeypatch):
    p = tmp_path / "x.tif"
    PILImage.fromarray(_u8(3, 3, 4), "CMYK").save(p)

    def no_conversion(self, *_a, **_k):
        raise ValueError(f"conversion from {self.mode} to RGB not supported")
    monkeypatch.setattr(PILImage.Image, "convert", no_conversion)
    with pytest.raises(ImageReadError, match=r"x\.tif.*unsupported mode CMYK"):
        read_image(p)


# ---------------------------------------------------------------------------- suffixes


def test_suffixes_cover_what_single_files_accept():
    assert {".png", ".jpg", ".jpeg", ".gif", ".tif", ".tiff", ".webp", ".bmp",
            ".ppm", ".pgm"} <= IMAGE_SUFFIXES
    PILImage.init()
    registered = PILImage.registered_extensions()
    assert all(s in registered for s in IMAGE_SUFFIXES), IMAGE_SUFFIXES - set(registered)


@pytest.mark.parametrize("suffix", sorted(IMAGE_SUFFIXES))
def test_every_listed_suffix_reads(tmp_path, suffix):
    a = _u8(6, 8, 3)
    im = PILImage.fromarray(a)
    if suffix == ".pbm":
        im = im.convert("1")
    elif suffix == ".pgm":
        im = im.convert("L")
    p = tmp_path / f"img{suffix}"
    im.save(p, format=PILImage.registered_extensions()[suffix])
    img = read_image(p)
    assert img.rgb.shape == (3, 6, 8)
    assert img.grayscale is (suffix in (".pbm", ".pgm"))
    if suffix not in (".jpg", ".jpeg", ".jpe", ".jfif", ".webp", ".gif", ".pbm", ".pgm"):
        np.testing.assert_allclose(img.rgb.permute(1, 2, 0).numpy(), a / 255, atol=1e-6)


def test_read_rgb_uint8_still_works(tmp_path):
    a = _u8(4, 4, 3)
    PILImage.fromarray(a).save(tmp_path / "e.png")
    assert torch.equal(images.read_rgb_uint8(tmp_path / "e.png"), torch.from_numpy(a).permute(2, 0, 1))
