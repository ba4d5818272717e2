"""Image files <-> tensors, keeping what users care about: 8- and 16-bit depth, alpha,
grayscale, EXIF orientation and the ICC colour profile.

An ``Image`` holds ``rgb`` as float32 (3, H, W) in [0, 1] (grey sources are copied into all
three channels), an optional ``alpha`` float32 (1, H, W) in [0, 1], and the facts needed to
write the result back in the same form.

The rule
--------
Every file is read by the mode Pillow opens it in, except non-palette PNGs whose samples are
not 8 bits deep (16-bit, and 1/2/4-bit grey), which pypng decodes: Pillow truncates 16-bit
colour PNGs to 8 bits and mis-scales the colour key of low-depth grey PNGs. ``v`` is the
stored sample value.

================================  ==============================================  ====  =====  =====  ==================
source (Pillow mode)              read as                                         grey  alpha  depth  written as (PNG)
================================  ==============================================  ====  =====  =====  ==================
1 (bilevel)                       0 -> 0.0, 1 -> 1.0                              yes   key    8      L / LA
L                                 v / 255                                         yes   key    8      L / LA
LA, La                            Pillow ``convert("LA")``, v / 255               yes   yes    8      LA
P (palette)                       Pillow ``convert("RGB")``, v / 255              no    no     8      RGB
P with transparency, PA           Pillow ``convert("RGBA")``: partial alpha kept  no    yes    8      RGBA
RGB, RGBX                         v / 255                                         no    key    8      RGB / RGBA
RGBA, RGBa                        v / 255 (RGBa un-premultiplied by Pillow)       no    yes    8      RGBA
CMYK, YCbCr, HSV, LAB             Pillow ``convert("RGB")`` (no colour mgmt)      no    no     8      RGB
I;16, I;16B, I;16L, I;16N         v / 65535                                       yes   key    16     16-bit grey
I (32-bit int)                    clip(v, 0, 65535) / 65535                       yes   no     16     16-bit grey
F (32-bit float)                  v as-is, clipped to [0, 1]; NaN/Inf: error      yes   no     16     16-bit grey
PNG, 16-bit G / GA / RGB / RGBA   pypng, v / 65535 (v / (2**sBIT - 1) with sBIT)  G,GA  key/A  16     same planes, 16-bit
PNG, 1/2/4-bit grey               pypng, v / (2**depth - 1)                       yes   key    8      L / LA
PPM/PGM (P2/P3/P5/P6), maxval>255 own reader, v / maxval                          P2,P5 no     16     16-bit grey / RGB
TIFF, 16-bit RGB / RGBA, chunky   own reader of Pillow's uncompressed strips      no    A      16     16-bit RGB / RGBA
================================  ==============================================  ====  =====  =====  ==================

* "key": a colour-key transparency (PNG ``tRNS`` on a grey or RGB image, Pillow's
  ``info["transparency"]``) becomes an alpha channel: 0 where every channel equals the key,
  1 elsewhere. Without a key there is no alpha.
* Float (F) and 32-bit int (I) images are written as 16-bit PNG so that their precision does
  not drop to 8 bits; values outside the range are clipped and a note says how many.
* Written files are always 8-bit (Pillow) or 16-bit (pypng, PNG only), with the source's
  alpha and channel count (grey output is the mean of the three channels).
* EXIF orientation (``getexif()[0x0112]``, which Pillow also fills from XMP) is applied to
  the pixels on every path, 16-bit PNGs included (their ``eXIf`` chunk).
* The ICC profile is kept in ``Image.icc_profile`` and written into the output when its
  colour space matches the output ('RGB ' for colour, 'GRAY' for grey); otherwise (e.g. a
  CMYK profile on a file converted to RGB) it is dropped and a note says so.
* Animated GIF/APNG/WebP and multi-page TIFF: only the first frame is read; a note says so.
* 16-bit colour TIFFs that are compressed or planar are read by Pillow at 8 bits (Pillow has no
  16-bit colour mode), unless ``tifffile`` is installed (then read at 16 bits); without it a
  note says that precision was reduced to 8 bits.
* Size: images above ``max_pixels`` (default: Pillow's decompression-bomb limit) are refused
  before any pixel data is decoded.
* ``Image.notes`` collects these per-file remarks (human-readable strings) for the caller to
  print; nothing is changed silently.
"""
from __future__ import annotations

import struct
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from PIL import UnidentifiedImageError

from esr_kernels.errors import EsrError

# Every still-image suffix read_image accepts through Pillow; folders expand to exactly these,
# so a folder never skips a file that would be accepted on its own.
IMAGE_SUFFIXES = {
    ".png", ".apng", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".tif", ".tiff",
    ".webp", ".gif", ".tga", ".ppm", ".pgm", ".pbm", ".pnm",
}

# Pillow's own default for PIL.Image.MAX_IMAGE_PIXELS (1 GiB of 4-byte pixels / 3), written
# out so that a program that changed Pillow's global does not change ours.
DEFAULT_MAX_PIXELS = int(1024 * 1024 * 1024 // 4 // 3)  # 89,478,485

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_ORIENTATION_TAG = 0x0112


class ImageReadError(EsrError, ValueError):
    """A file could not be read as an image."""


@dataclass
class Image:
    rgb: torch.Tensor             # (3, H, W) float32 in [0, 1]
    alpha: torch.Tensor | None    # (1, H, W) float32 in [0, 1], or None
    bit_depth: int                # 8 or 16: the depth write_image uses
    grayscale: bool               # source had one colour channel
    icc_profile: bytes | None = None                 # source ICC profile, written back as-is
    notes: list[str] = field(default_factory=list)   # per-file remarks for the user
    # The planes as written, already quantised: (H, W, C) uint8 (bit_depth 8) or uint16, grey or
    # RGB then alpha (the Upscaler's output, never float at full size; rgb/alpha are views of it).
    pixels: np.ndarray | None = None


# ---------------------------------------------------------------------------- helpers


def _describe(exc: BaseException) -> str:
    """Exception text with its type name exactly once (pypng's str() already starts with it;
    Pillow's OSError/ValueError texts are self-explanatory and keep their old form)."""
    text = str(exc)
    if isinstance(exc, (OSError, UnidentifiedImageError, ValueError, SyntaxError)) and text:
        return text
    name = type(exc).__name__
    if not text:
        return name
    return text if text.startswith(name) else f"{name}: {text}"


def _check_size(path: Path, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageReadError(
            f"cannot read image {path}: {width}x{height} = {width * height:,} pixels is above "
            f"the limit of {max_pixels:,} pixels (a guard against decompression bombs); "
            f"raise it with --max-pixels if the file is trusted")


def _orient(arr: np.ndarray, orientation: int | None) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to an (H, W, C) array, as ImageOps.exif_transpose does
    to an image; other values leave it unchanged."""
    if orientation == 2:
        arr = arr[:, ::-1]                       # mirror left-right
    elif orientation == 3:
        arr = arr[::-1, ::-1]                    # rotate 180
    elif orientation == 4:
        arr = arr[::-1]                          # mirror top-bottom
    elif orientation == 5:
        arr = arr.transpose(1, 0, 2)             # transpose (main diagonal)
    elif orientation == 6:
        arr = np.rot90(arr, -1)                  # rotate 90 clockwise
    elif orientation == 7:
        arr = np.rot90(arr, 2).transpose(1, 0, 2)  # transverse (anti-diagonal)
    elif orientation == 8:
        arr = np.rot90(arr, 1)                   # rotate 90 counter-clockwise
    return np.ascontiguousarray(arr)


def _key_alpha(arr: np.ndarray, key) -> np.ndarray:
    """(H, W, 1) float32 alpha from a colour key: 0 where all channels of ``arr`` (H, W, C)
    equal ``key`` (an int, or a tuple with one value per channel), 1 elsewhere."""
    key = np.asarray(key, dtype=np.int64).reshape(-1)
    match = np.all(arr.astype(np.int64) == key[: arr.shape[2]], axis=2)
    return (~match).astype(np.float32)[..., None]


def _icc_space(profile: bytes) -> bytes:
    """The profile's data colour space signature (header bytes 16-20), e.g. b'RGB ', b'GRAY'."""
    return profile[16:20] if len(profile) >= 20 else b""


def _keep_icc(path: Path, profile: bytes | None, gray: bool, notes: list[str]) -> bytes | None:
    """The profile if it describes the colour space the image is written in, else None (noted)."""
    if not profile:
        return None
    want = b"GRAY" if gray else b"RGB "
    space = _icc_space(profile)
    if space == want:
        return profile
    notes.append(f"{path}: ICC profile for colour space {space.decode('latin-1').strip()!r} "
                 f"dropped: the output is {'grey' if gray else 'RGB'}")
    return None


def _frames_note(path: Path, frames: int, kind: str) -> list[str]:
    if frames > 1:
        return [f"{path}: {kind} image with {frames} frames; only the first frame is upscaled"]
    return []


def _to_image(arr: np.ndarray, scale: float, gray: bool, alpha: np.ndarray | None,
              bit_depth: int, icc: bytes | None, notes: list[str]) -> Image:
    """(H, W, C) samples (C = 1 or 3, plus alpha as the last channel when C = 2 or 4), or a
    separate ``alpha`` (H, W, 1) already in [0, 1] -> Image."""
    x = arr.astype(np.float32) / np.float32(scale)
    channels = x.shape[2]
    if alpha is None and channels in (2, 4):
        alpha = x[..., -1:]
    colour = x[..., :1] if gray else x[..., :3]
    rgb = torch.from_numpy(np.ascontiguousarray(colour)).permute(2, 0, 1)
    rgb = rgb.expand(3, -1, -1).contiguous() if gray else rgb.contiguous()
    a = None if alpha is None else \
        torch.from_numpy(np.ascontiguousarray(alpha, dtype=np.float32)).permute(2, 0, 1).contiguous()
    return Image(rgb, a, bit_depth, gray, icc, notes)


# ---------------------------------------------------------------------------- PNG via pypng


@dataclass
class _PngHeader:
    width: int
    height: int
    bit_depth: int
    colour_type: int              # 0 grey, 2 RGB, 3 palette, 4 grey+alpha, 6 RGBA
    exif: bytes | None
    icc: bytes | None
    icc_error: str | None
    frames: int                   # from acTL (APNG); 1 for a still PNG


# Compressed metadata (PNG iCCP; Pillow caps zTXt/iTXt and its own iCCP at 1 MB) is inflated
# at most to this size, and metadata chunks (iCCP, eXIf) larger than it are not read: real ICC
# profiles and EXIF blocks are tens of KB, and a few hundred KB of deflate can inflate to GBs.
MAX_METADATA_BYTES = 4 << 20


def _mb(n: int) -> str:
    return f"{n / 2**20:g} MB"


def inflate_capped(data: bytes, what: str, limit: int | None = None) -> bytes:
    """zlib-inflate ``data``, stopping at ``limit`` bytes (default MAX_METADATA_BYTES):
    ValueError when the stream would inflate to more. Memory stays bounded by the limit."""
    limit = MAX_METADATA_BYTES if limit is None else limit
    d = zlib.decompressobj()
    out = d.decompress(data, limit + 1)
    if len(out) > limit or d.unconsumed_tail:
        raise ValueError(f"{what} inflates to more than the {_mb(limit)} limit")
    return out


def _png_header(path: Path) -> _PngHeader | None:
    """Walk the chunk headers of a PNG without decoding pixels (chunk data other than IHDR,
    iCCP, eXIf and acTL is skipped with seek). None if the file is not a PNG."""
    with open(path, "rb") as f:
        if f.read(8) != _PNG_SIGNATURE:
            return None
        head = f.read(8)
        if len(head) < 8 or head[4:] != b"IHDR":
            raise ImageReadError(f"cannot read image {path}: PNG without an IHDR chunk")
        ihdr = f.read(13)
        if len(ihdr) < 13:
            raise ImageReadError(f"cannot read image {path}: truncated PNG header")
        width, height, depth, ctype = struct.unpack(">IIBB", ihdr[:10])
        f.seek(4, 1)  # CRC
        info = _PngHeader(width, height, depth, ctype, None, None, None, 1)
        while True:
            head = f.read(8)
            if len(head) < 8:
                break  # truncated: pypng reports it when it decodes
            length, ctype_ = struct.unpack(">I4s", head)
            if ctype_ == b"IEND":
                break
            if ctype_ in (b"iCCP", b"eXIf") and length > MAX_METADATA_BYTES:
                # Never read, let alone inflated: a chunk this large is no real profile or EXIF.
                what = "ICC profile" if ctype_ == b"iCCP" else "EXIF block"
                if ctype_ == b"iCCP":
                    info.icc_error = f"{what} of {length:,} bytes is over the {_mb(MAX_METADATA_BYTES)} limit"
                f.seek(length + 4, 1)
            elif ctype_ in (b"iCCP", b"eXIf", b"acTL"):
                data = f.read(length)
                if ctype_ == b"eXIf":
                    info.exif = data
                elif ctype_ == b"acTL" and len(data) >= 4:
                    info.frames = struct.unpack(">I", data[:4])[0]
                elif ctype_ == b"iCCP":
                    name_end = data.find(b"\0")
                    try:
                        info.icc = inflate_capped(data[name_end + 2:], "ICC profile") if name_end > 0 else None
                    except (zlib.error, ValueError) as exc:
                        info.icc_error = str(exc)
                f.seek(4, 1)
            else:
                f.seek(length + 4, 1)
    return info


def _read_png_pypng(path: Path, hdr: _PngHeader) -> Image:
    """Non-palette PNG with non-8-bit samples, through pypng, at its own depth."""
    import png

    # Our own file object, so that it is closed when pypng raises on a corrupt file.
    with open(path, "rb") as f:
        width, height, rows, info = png.Reader(file=f).asDirect()
        planes = info["planes"]
        # Rows are filled into one preallocated array: a list of per-row arrays would double
        # peak memory on large images.
        arr = np.empty((height, width * planes), dtype=np.uint16)
        for y, row in enumerate(rows):
            arr[y] = row
    arr = arr.reshape(height, width, planes)
    # asDirect turns a tRNS colour key into an alpha channel and rescales to the sBIT depth,
    # so info["bitdepth"] (not the IHDR depth) is the scale of the values it returns.
    scale = float((1 << info["bitdepth"]) - 1)
    notes = _frames_note(path, hdr.frames, "animated")
    if hdr.exif:
        exif = PILImage.Exif()
        exif.load(b"Exif\x00\x00" + hdr.exif)  # the prefix Pillow's own PNG reader adds
        arr = _orient(arr, exif.get(_ORIENTATION_TAG))
    gray = planes in (1, 2)
    if hdr.icc_error:
        notes.append(f"{path}: ICC profile unreadable ({hdr.icc_error}); not copied")
    icc = _keep_icc(path, hdr.icc, gray, notes)
    return _to_image(arr, scale, gray, None, 16 if hdr.bit_depth > 8 else 8, icc, notes)


# ---------------------------------------------------------------------------- 16-bit PPM/PGM

# Pillow opens 16-bit PPM (P6) as 8-bit RGB; these netpbm files are read here instead.
_PNM_MAGICS = {b"P2": (1, False), b"P3": (3, False), b"P5": (1, True), b"P6": (3, True)}


@dataclass
class _PnmHeader:
    magic: bytes
    width: int
    height: int
    maxval: int
    offset: int                   # first byte of the samples (binary formats)


def _pnm_header(path: Path) -> _PnmHeader | None:
    """The header of a P2/P3/P5/P6 netpbm file, or None if ``path`` is not one (or is not
    readable as one: Pillow then says why)."""
    with open(path, "rb") as f:
        head = f.read(1024)
    if head[:2] not in _PNM_MAGICS:
        return None
    fields, i = [], 2
    while len(fields) < 3:
        while i < len(head) and head[i:i + 1].isspace():
            i += 1
        if i >= len(head):
            return None
        if head[i:i + 1] == b"#":  # a comment runs to the end of the line
            end = head.find(b"\n", i)
            if end < 0:
                return None
            i = end + 1
            continue
        j = i
        while j < len(head) and head[j:j + 1].isdigit():
            j += 1
        if j == i:
            return None
        fields.append(int(head[i:j]))
        i = j
    if i >= len(head) or not head[i:i + 1].isspace():
        return None
    width, height, maxval = fields
    return _PnmHeader(head[:2], width, height, maxval, i + 1)


def _read_pnm16(path: Path, hdr: _PnmHeader) -> Image:
    """A netpbm file with maxval > 255 (two bytes a sample, big-endian), at 16 bits."""
    planes, binary = _PNM_MAGICS[hdr.magic]
    if not 0 < hdr.maxval <= 65535 or hdr.width <= 0 or hdr.height <= 0:
        raise ImageReadError(f"cannot read image {path}: bad PNM header ({hdr.width}x{hdr.height}, "
                             f"maxval {hdr.maxval})")
    count = hdr.width * hdr.height * planes
    with open(path, "rb") as f:
        f.seek(hdr.offset)
        if binary:
            data = f.read(2 * count)
            if len(data) < 2 * count:
                raise ImageReadError(f"cannot read image {path}: truncated PNM data "
                                     f"({len(data)} of {2 * count} bytes)")
            v = np.frombuffer(data, dtype=">u2")
        else:
            v = np.array(f.read().split()[:count], dtype=np.int64)
            if v.size < count:
                raise ImageReadError(f"cannot read image {path}: truncated PNM data "
                                     f"({v.size} of {count} samples)")
    notes: list[str] = []
    _note_clipped(path, v, 0, hdr.maxval, notes)
    arr = np.clip(v, 0, hdr.maxval).astype(np.uint16).reshape(hdr.height, hdr.width, planes)
    return _to_image(arr, float(hdr.maxval), planes == 1, None, 16, None, notes)


# ---------------------------------------------------------------------------- 16-bit colour TIFF

_TIFF_BITS, _TIFF_PLANAR = 258, 284


def _tiff16_colour(im: PILImage.Image) -> bool:
    """A TIFF whose colour samples are 16 bits, which Pillow opens as 8-bit RGB/RGBA."""
    if im.format != "TIFF" or im.mode not in ("RGB", "RGBA", "RGBX", "RGBa"):
        return False
    bits = im.tag_v2.get(_TIFF_BITS)
    bits = bits if isinstance(bits, tuple) else (bits,)
    return any(b == 16 for b in bits)


def _read_tiff16(path: Path, im: PILImage.Image) -> np.ndarray | None:
    """(H, W, 3 or 4) uint16 samples of a 16-bit colour TIFF's current frame, or None where
    this reader does not apply (compressed or planar: then tifffile, if installed, else None)."""
    spp = int(im.tag_v2.get(277, 3))
    planar = im.tag_v2.get(_TIFF_PLANAR, 1)
    tiles = im.tile
    if (spp in (3, 4) and planar == 1 and tiles and all(t[0] == "raw" for t in tiles)
            and getattr(im, "_n_frames", None) in (None, 1) and im.tell() == 0):
        order = ">" if im.tag_v2._endian == ">" else "<"
        arr = np.empty((im.height, im.width, spp), dtype=np.uint16)
        fp = im.fp
        for tile in tiles:
            x0, y0, x1, y1 = tile[1]
            n = (x1 - x0) * (y1 - y0) * spp
            fp.seek(tile[2])
            data = fp.read(2 * n)
            if len(data) < 2 * n:
                raise ImageReadError(f"cannot read image {path}: truncated TIFF strip")
            arr[y0:y1, x0:x1] = np.frombuffer(data, dtype=f"{order}u2").reshape(y1 - y0, x1 - x0, spp)
        return arr
    try:
        import tifffile
    except ImportError:
        return None
    arr = tifffile.imread(path, key=0)
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    return arr


# ---------------------------------------------------------------------------- Pillow

# PIL.Image.MAX_IMAGE_PIXELS is a process-wide setting that Pillow checks on open and again
# inside some decoders (TIFF tiles, GIF frames). To honour our own max_pixels (looser or
# stricter) it is swapped for the duration of one read, under a lock so that two reads in
# threads do not restore each other's value.
_PIL_LIMIT_LOCK = threading.Lock()


@contextmanager
def _pillow_limit(limit: int | None):
    from PIL import PngImagePlugin

    with _PIL_LIMIT_LOCK:
        saved = PILImage.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_MEMORY
        PILImage.MAX_IMAGE_PIXELS = limit
        # Pillow inflates each PNG text chunk to at most 1 MB, but up to 64 MB of them in all.
        PngImagePlugin.MAX_TEXT_MEMORY = min(saved[1], MAX_METADATA_BYTES)
        try:
            yield
        finally:
            PILImage.MAX_IMAGE_PIXELS, PngImagePlugin.MAX_TEXT_MEMORY = saved


def _note_clipped(path: Path, arr: np.ndarray, lo: float, hi: float, notes: list[str]) -> None:
    outside = int(np.count_nonzero((arr < lo) | (arr > hi)))
    if outside:
        notes.append(f"{path}: {outside} pixel values outside [{lo:g}, {hi:g}] were clipped")


def _read_pillow(path: Path, max_pixels: int | None) -> Image:
    with _pillow_limit(None):
        # Opening parses the header only; our own check runs before anything is decoded.
        im = PILImage.open(path)
    with im:
        _check_size(path, im.width, im.height, max_pixels)
        with _pillow_limit(max_pixels):
            return _pillow_to_image(path, im)


def _pillow_to_image(path: Path, im: PILImage.Image) -> Image:
    notes: list[str] = []
    mode = im.mode
    key = im.info.get("transparency") if mode in ("1", "L", "RGB", "I", "I;16", "I;16B",
                                                   "I;16L", "I;16N") else None
    orientation = im.getexif().get(_ORIENTATION_TAG)
    icc = im.info.get("icc_profile") or None
    alpha = None
    wide = _read_tiff16(path, im) if _tiff16_colour(im) else None
    if wide is not None:
        arr, scale, gray, depth = (wide[..., :3] if mode == "RGBX" else wide), 65535.0, False, 16
    elif mode == "F":
        v = np.asarray(im, dtype=np.float32)
        bad = int(np.count_nonzero(~np.isfinite(v)))
        if bad:
            raise ImageReadError(f"cannot read image {path}: contains NaN/Inf pixels "
                                 f"({bad} of {v.size})")
        _note_clipped(path, v, 0.0, 1.0, notes)
        arr, scale, gray, depth = np.clip(v, 0.0, 1.0)[..., None], 1.0, True, 16
    elif mode.startswith("I;16") or mode == "I":
        v = np.asarray(im)
        if mode == "I":
            _note_clipped(path, v, 0, 65535, notes)
        arr = np.clip(v, 0, 65535).astype(np.uint16)[..., None]
        if isinstance(key, int):
            alpha = _key_alpha(arr, key)
        scale, gray, depth = 65535.0, True, 16
    elif mode in ("1", "L"):
        # Mode 1 arrays are bool: 0/1, so a key of 0/255 (Pillow's convention for 1) or 0/1
        # are both mapped onto the 0/1 values before comparing.
        raw = np.asarray(im).astype(np.uint8)[..., None]
        if isinstance(key, int):
            alpha = _key_alpha(raw, (1 if key else 0) if mode == "1" else key)
        arr = raw * 255 if mode == "1" else raw
        scale, gray, depth = 255.0, True, 8
    elif mode in ("LA", "La"):
        arr, scale, gray, depth = np.asarray(im.convert("LA")), 255.0, True, 8
    elif mode == "RGB":
        arr = np.asarray(im)
        if isinstance(key, tuple) and len(key) == 3:  # an RGB colour key, not a palette index
            alpha = _key_alpha(arr, key)
        scale, gray, depth = 255.0, False, 8
    elif mode in ("RGBA", "RGBa", "PA") or (mode == "P" and "transparency" in im.info):
        # Pillow's palette conversion carries a tRNS table's partial alpha per index.
        arr, scale, gray, depth = np.asarray(im.convert("RGBA")), 255.0, False, 8
    else:  # P, RGBX, CMYK, YCbCr, HSV, LAB, ...: Pillow's own conversion to RGB
        try:
            arr = np.asarray(im.convert("RGB"))
        except ValueError as exc:
            raise ImageReadError(f"cannot read image {path}: unsupported mode {mode} "
                                 f"({exc})") from exc
        scale, gray, depth = 255.0, False, 8
    if wide is None and _tiff16_colour(im):
        notes.append(f"{path}: 16-bit colour TIFF (compressed or planar) read at 8 bits: precision "
                     f"reduced (install tifffile to keep 16 bits)")
    if arr.ndim == 2:
        arr = arr[..., None]
    arr = _orient(arr, orientation)
    if alpha is not None:
        alpha = _orient(alpha, orientation)
    icc = _keep_icc(path, icc, gray, notes)
    frames = 1
    try:
        frames = int(getattr(im, "n_frames", 1))
    except Exception as exc:  # counting walks the file; a broken later frame must not fail frame 1
        notes.append(f"{path}: frames after the first are unreadable ({_describe(exc)}); "
                     f"only the first frame is upscaled")
    kind = "multi-page" if im.format in ("TIFF", "MPO") else "animated"
    notes = _frames_note(path, frames, kind) + notes
    return _to_image(arr, scale, gray, alpha, depth, icc, notes)


# ---------------------------------------------------------------------------- public API


def read_image(path: str | Path, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image:
    """Read ``path`` by the rule in the module docstring.

    ``max_pixels``: width * height above which the file is refused (ImageReadError) before
    its pixels are decoded; None means no limit. Raises ImageReadError naming the file for
    anything unreadable, too large, or holding NaN/Inf samples.
    """
    path = Path(path)
    try:
        hdr = _png_header(path)
        if hdr is not None:
            _check_size(path, hdr.width, hdr.height, max_pixels)
            if hdr.colour_type != 3 and hdr.bit_depth != 8:
                return _read_png_pypng(path, hdr)
        pnm = _pnm_header(path)
        if pnm is not None and pnm.maxval > 255:
            _check_size(path, pnm.width, pnm.height, max_pixels)
            return _read_pnm16(path, pnm)
        return _read_pillow(path, max_pixels)
    except ImageReadError:
        raise
    except Exception as exc:  # Pillow's OSError/ValueError/..., pypng's own error types
        raise ImageReadError(f"cannot read image {path}: {_describe(exc)}") from exc


def image_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from the file's header, nothing decoded; None if it cannot be read."""
    path = Path(path)
    try:
        hdr = _png_header(path)
        if hdr is not None:
            return hdr.width, hdr.height
        with _pillow_limit(None):
            with PILImage.open(path) as im:
                return im.width, im.height
    except Exception:
        return None


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] float -> uint8 with clamping and round-half-to-even (numpy's and MATLAB's
    im2uint8 agree on all but exact halves, which float outputs practically never hit)."""
    return (x.clamp(0, 1) * 255.0).round().to(torch.uint8)


def _png_with_icc(data: bytes, profile: bytes) -> bytes:
    """A PNG byte stream with an iCCP chunk inserted right after IHDR (it must precede
    PLTE and IDAT); pypng's Writer has no option for it."""
    import io

    import png

    chunks = list(png.Reader(bytes=data).chunks())
    iccp = b"ICC profile\0\0" + zlib.compress(profile)  # name, NUL, method 0 (zlib), data
    chunks.insert(1, (b"iCCP", iccp))
    out = io.BytesIO()
    png.write_chunks(out, chunks)
    return out.getvalue()


def write_image(path: str | Path, img: Image) -> None:
    """Write ``img`` with its own depth, alpha, channel count and ICC profile.
    16-bit output needs .png. A profile whose colour space does not match the written
    channels (GRAY for grey, RGB for colour) is not written (with a warning)."""
    path = Path(path)
    if img.pixels is None:
        planes = img.rgb.mean(dim=0, keepdim=True) if img.grayscale else img.rgb
        if img.alpha is not None:
            planes = torch.cat([planes, img.alpha], dim=0)
        planes = planes.clamp(0, 1)
    icc = img.icc_profile or None
    if icc is not None and _icc_space(icc) != (b"GRAY" if img.grayscale else b"RGB "):
        warnings.warn(f"{path}: ICC profile does not match the written colour space; "
                      f"not written", stacklevel=2)
        icc = None
    if img.bit_depth == 16:
        if path.suffix.lower() != ".png":
            raise ValueError(f"16-bit output needs a .png file name, got {path.name}")
        import io

        import png

        arr = img.pixels if img.pixels is not None else (
            (planes * 65535.0).round().to(torch.int32).permute(1, 2, 0).numpy().astype(np.uint16))
        h, w, c = arr.shape
        writer = png.Writer(width=w, height=h, bitdepth=16, greyscale=c in (1, 2), alpha=c in (2, 4))
        buf = io.BytesIO()
        writer.write_array(buf, arr.reshape(-1))
        data = buf.getvalue() if icc is None else _png_with_icc(buf.getvalue(), icc)
        path.write_bytes(data)
        return
    arr = img.pixels if img.pixels is not None else to_uint8(planes).permute(1, 2, 0).numpy()
    mode = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[arr.shape[2]]
    if arr.shape[2] == 1:
        arr = arr[..., 0]
    if path.suffix.lower() in (".jpg", ".jpeg") and mode in ("LA", "RGBA"):
        raise ValueError(f"{path.name}: JPEG cannot store alpha; use .png")
    extra = {} if icc is None else {"icc_profile": icc}
    PILImage.fromarray(arr).save(path, **extra)


def read_rgb_uint8(path: str | Path) -> torch.Tensor:
    """(3, H, W) uint8 RGB, for evaluation (the challenge protocol is 8-bit). Read by the same
    mode rule as ``read_image`` and then rounded to 8 bits, so that a 16-bit or float image is
    scaled, not clipped (Pillow's ``convert("RGB")`` clips 16-bit grey to 255); 8-bit RGB comes
    out bit-identical to the file. Alpha is dropped."""
    return to_uint8(read_image(path).rgb)
