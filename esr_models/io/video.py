"""Video files in and out (issue #12): ``esr upscale clip.mp4 -o out/`` -> ``out/clip_x4.mp4``.

Why PyAV
--------
Video goes through PyAV (``pip install av``), not an ``ffmpeg`` executable in a subprocess:

* it decodes and encodes in-process, frame by frame, and gives every decoded frame its own
  ``pts`` and ``time_base``, so each output frame is stamped with its input frame's time:
  variable frame rate survives exactly, and nothing is re-timed by a pipe of raw frames;
* audio, subtitle and data packets are copied as they are (remuxed, never re-encoded);
* its wheels bundle their own FFmpeg libraries (libx264, libx265, libvpx-vp9, SVT-AV1,
  aac, opus, ...), so no system FFmpeg is needed and the codecs on offer are known
  (``av.codecs_available``);
* errors arrive as Python exceptions (``av.FFmpegError``), which become per-file outcomes.

It is imported only when a video is handled or a video option is given, so still images
work without it.

What happens to a video
-----------------------
* The output keeps the input's container (.mp4, .mkv, .mov, .webm), chosen from the final
  output name (the temporary name ends the same way).
* The first video stream that is not cover art is upscaled: every frame, in presentation
  order, each keeping its timestamp and duration (same frame count, same frame rate,
  variable frame rate kept). Frames go through the model in batches of ``--batch-frames``;
  large frames are tiled as for still images (``--tile`` or automatic tiling).
* Colour: frames are decoded to RGB with the matrix and range they are tagged with
  (untagged: BT.601 below 720 lines, BT.709 from there, as players do); frames deeper than
  8 bits are decoded to 16-bit RGB. The output is encoded with ``--codec`` (default libx264,
  libvpx-vp9 for .webm) at ``--crf`` (constant quality; default 18), 8-bit yuv420p, limited
  range, converted with the input's matrix (BT.709 for untagged input) and tagged with it
  and with the input's primaries and transfer characteristic.
* A display rotation (phone videos) is applied to the pixels: the output is stored upright.
* Audio, subtitle and data streams are copied (packets remuxed, no re-encode) when the
  container accepts their codec; anything left out is named in a note with the reason.
  Container and stream metadata and chapters are kept.
* The pipeline is three stages joined by bounded queues: a decode thread (demux, decode,
  convert to RGB), the model in the calling thread, an encode thread (to 8-bit, colour
  conversion, encode, mux). Torch and FFmpeg release the GIL, so decoding and encoding
  overlap with the model, which is the bottleneck.
* The rules of still images hold: the video is encoded into a temporary file in the output
  folder and moved to its final name only when complete (``write_atomically``); an existing
  output is not replaced without ``--overwrite``; any failure (unreadable or corrupt file,
  no video stream, a decode or encode error) is a FAILED outcome naming the file, and the
  temporary file is removed, also on Ctrl-C.
"""
from __future__ import annotations

import argparse
import os
import queue
import sys
import threading
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from esr_kernels.errors import EsrError

from .jobs import DONE, FAILED, SKIPPED, Outcome, describe_error
from .media import VIDEO_SUFFIXES, frame_size  # noqa: F401  (importable from here, as before)
from .outputs import Job, OutputExistsError, write_atomically

# FFmpeg muxer of each suffix (the output's format comes from its final name).
MUXERS = {".mp4": "mp4", ".mkv": "matroska", ".mov": "mov", ".webm": "webm"}

DEFAULT_CRF = 18
DEFAULT_BATCH_FRAMES = 4
PIXEL_FORMAT = "yuv420p"

# Encoders whose constant-quality option is ``crf``, and its largest value.
CRF_RANGE = {"libx264": 51, "libx265": 51, "libvpx-vp9": 63, "libvpx": 63,
             "libsvtav1": 63, "libaom-av1": 63}
# Video encoders offered in --help / error messages when the PyAV wheel has them.
COMMON_ENCODERS = ("libx264", "libx265", "libvpx-vp9", "libvpx", "libsvtav1", "libaom-av1",
                   "mpeg4", "ffv1")

# Per-stream tags that describe the old encoding and would be wrong on the new one.
_STALE_TAGS = ("encoder", "duration", "number_of_frames", "number_of_bytes", "bps",
               "_statistics", "rotate", "handler_name", "vendor_id")


class VideoError(EsrError, ValueError):
    """A video that cannot be read or written; the message says why."""


def _import_av():
    try:
        import av
    except ImportError:
        raise VideoError("video needs PyAV: pip install av") from None
    return av


def default_codec(suffix: str) -> str:
    return "libvpx-vp9" if suffix.lower() == ".webm" else "libx264"


# ---- argparse types (early validation of --codec, --crf, --batch-frames) -------------------

def codec_arg(name: str) -> str:
    """--codec: a video encoder this PyAV has."""
    try:
        av = _import_av()
    except VideoError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    offered = ", ".join(c for c in COMMON_ENCODERS if c in av.codecs_available)
    try:
        codec = av.Codec(name, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError: no encoder of that name
        raise argparse.ArgumentTypeError(f"unknown video encoder {name!r} (this PyAV has: {offered})") from None
    if codec.type != "video":
        raise argparse.ArgumentTypeError(f"{name!r} encodes {codec.type}, not video "
                                         f"(this PyAV has: {offered})")
    return codec.name


def crf_arg(text: str) -> int:
    """--crf: constant-quality level, 0 (best; lossless with libx264) to 63."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--crf must be a whole number, got {text!r}") from None
    if not 0 <= value <= 63:
        raise argparse.ArgumentTypeError(f"--crf must be in [0, 63], got {value}")
    return value


def batch_frames_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--batch-frames must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"--batch-frames must be at least 1, got {value}")
    return value


# ---- settings ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoSettings:
    codec: str | None = None           # None: default_codec(output suffix)
    crf: int = DEFAULT_CRF
    batch_frames: int = DEFAULT_BATCH_FRAMES
    progress: bool = True
    max_pixels: int | None = None      # frame size limit (input frame and upscaled frame); None: none

    @classmethod
    def from_args(cls, args) -> "VideoSettings":
        return cls(codec=getattr(args, "codec", None), max_pixels=getattr(args, "max_pixels", None) or None,
                   crf=DEFAULT_CRF if getattr(args, "crf", None) is None else args.crf,
                   batch_frames=getattr(args, "batch_frames", None) or DEFAULT_BATCH_FRAMES,
                   progress=not getattr(args, "quiet", False))


# ---- the per-file entry point -------------------------------------------------------------------

def upscale_video(upscaler, job: Job, args) -> Outcome:
    """Upscale one video file to ``job.dst``. Never raises (but KeyboardInterrupt): every
    failure is a FAILED outcome naming the file. ``args``: codec, crf, batch_frames,
    overwrite, quiet (missing ones take their defaults)."""
    notes: list[str] = []
    src = job.src
    notify = getattr(upscaler, "notify", None)
    if notify is not None:  # auto-tiling says so once per video, not once per batch
        seen: set[str] = set()

        def once(msg: str) -> None:
            if msg not in seen:
                seen.add(msg)
                notify(msg)
        upscaler.notify = once
    try:
        settings = VideoSettings.from_args(args)
        write_atomically(job.dst, lambda tmp: transcode(upscaler, src, tmp, job.dst.suffix, settings,
                                                        notes), bool(getattr(args, "overwrite", False)))
        return Outcome(str(src), DONE, notes=notes)
    except OutputExistsError as exc:  # a concurrent run made it meanwhile
        return Outcome(str(src), SKIPPED, _named(src, str(exc)))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one file's failure never stops the batch
        return Outcome(str(src), FAILED, _named(src, _describe(exc)), notes=notes)
    finally:
        if notify is not None:
            upscaler.notify = notify


def _named(src, msg: str) -> str:
    return msg if str(src) in msg else f"{src}: {msg}"


def _describe(exc: BaseException) -> str:
    av = sys.modules.get("av")
    if av is not None and isinstance(exc, av.FFmpegError):
        return _ffmpeg_reason(exc)
    return describe_error(exc)


def _ffmpeg_reason(exc: BaseException) -> str:
    """FFmpeg's reason without the errno and file name PyAV adds."""
    return getattr(exc, "strerror", None) or str(exc)


# ---- transcoding ------------------------------------------------------------------------------

_END = object()


class _Stopped(Exception):
    """Another stage failed or the run was interrupted: this stage leaves quietly."""


def transcode(upscaler: Callable, src: Path, dst: Path, suffix: str, settings: VideoSettings,
              notes: list[str]) -> None:
    """Decode ``src``, upscale every frame of its video stream with ``upscaler`` ((N,3,H,W)
    float [0,1] -> (N,3,sH,sW)), encode into ``dst`` in the container of ``suffix`` and copy
    the other streams. ``notes`` gets what the user should know (streams left out, ...)."""
    av = _import_av()
    muxer = MUXERS.get(suffix.lower())
    if muxer is None:
        raise VideoError(f"no video container for {suffix!r} (one of {', '.join(sorted(MUXERS))})")
    codec = settings.codec or default_codec(suffix)
    try:
        inp = av.open(str(src), "r")
    except av.FFmpegError as exc:
        raise VideoError(f"{src}: not a readable video ({_ffmpeg_reason(exc)})") from None
    try:
        vin = _pick_video_stream(inp, src, notes)
        if vin.codec_context.width <= 0 or vin.codec_context.height <= 0:
            raise VideoError(f"{src}: video stream has no frame size (corrupt?)")
        _check_frame_size(src, vin.codec_context.width, vin.codec_context.height,
                          int(getattr(upscaler, "scale", 4)), settings.max_pixels)
        turns = _display_turns(av, src, vin.index)
        if turns:
            turn = "90° clockwise" if turns == 3 else f"{90 * turns}° counterclockwise"
            notes.append(f"{src}: the file says to show its frames turned {turn} (a phone video?); "
                         "they are turned upright before upscaling, so the output needs no rotation flag")
        out, copies = _open_output(av, inp, vin, dst, muxer, suffix, codec, settings, upscaler, src,
                                   notes, turns)
        try:
            _pipeline(_Transcode(av=av, inp=inp, vin=vin, out=out, copies=copies, upscaler=upscaler,
                                 src=src, settings=settings, notes=notes, turns=turns))
        except BaseException:
            _close_quietly(av, out)
            raise
        out.close()
    finally:
        _close_quietly(av, inp)


def _check_frame_size(src: Path, width: int, height: int, scale: int, max_pixels: int | None) -> None:
    """--max-pixels for videos, from the stream header before any frame is decoded: the frame
    and the upscaled frame (what the encoder is given) must both be within the limit."""
    if not max_pixels:
        return
    for what, w, h in (("frame", width, height), ("upscaled frame", width * scale, height * scale)):
        if w * h > max_pixels:
            raise VideoError(f"{src}: {what} size {w}x{h} = {w * h:,} pixels is above the limit of "
                             f"{max_pixels:,} pixels (--max-pixels); raise it if the file is trusted")


def _display_turns(av, src: Path, index: int) -> int:
    """Quarter turns counterclockwise (np.rot90's ``k``) that show the stored frames the way
    players do, from the display matrix (phone videos); 0 when there is none or it cannot be
    read here (the pipeline then reports the real problem) or this PyAV does not say (PyAV
    14.0's frames have no ``rotation``)."""
    try:
        with av.open(str(src)) as probe:
            stream = probe.streams[index]
            for frame in probe.decode(stream):
                return int(round((getattr(frame, "rotation", None) or 0) / 90)) % 4
    except av.FFmpegError:
        pass
    return 0


def _close_quietly(av, container) -> None:
    """Close ``container`` while another failure is on its way: FFmpeg's error about the
    half-written file (the trailer, packets buffered for it) would only hide that one."""
    try:
        container.close()
    except av.FFmpegError:
        pass


def _pick_video_stream(inp, src: Path, notes: list[str]):
    videos = [s for s in inp.streams.video if not _is_cover_art(s)]
    if not videos:
        raise VideoError(f"{src}: no video stream" + (" (only cover art)" if inp.streams.video else ""))
    others = len(inp.streams.video) - 1
    if others:
        notes.append(f"{src}: {others} other video stream(s) (cover art, other angles) left out; "
                     f"only stream #{videos[0].index} is upscaled")
    return videos[0]


def _is_cover_art(stream) -> bool:
    disposition = getattr(stream, "disposition", None)  # PyAV 14.0 has no stream.disposition
    return disposition is not None and bool(disposition & disposition.__class__.attached_pic)


def _codec_id_name(stream) -> str | None:
    cc = stream.codec_context
    if cc is None:
        return None
    return cc.codec.canonical_name


def _copy_tags(src_meta, dst_meta) -> None:
    for key, value in dict(src_meta).items():
        if not any(key.lower().startswith(stale) for stale in _STALE_TAGS):
            dst_meta[key] = value


def _frame_rate(vin) -> Fraction:
    for rate in (vin.average_rate, vin.guessed_rate, vin.base_rate):
        if rate:
            return Fraction(rate)
    return Fraction(25)


def _open_output(av, inp, vin, dst, muxer, suffix, codec, settings, upscaler, src, notes, turns):
    """The output container, header written, with the upscaled video stream and the streams
    copied from the input: (container, {input stream index: output stream})."""
    candidates, left_out = [], []
    for s in inp.streams:
        if s.index == vin.index or s.type == "video":
            continue
        name = _codec_id_name(s)
        if s.type not in ("audio", "subtitle", "data") or not name or name == "none":
            left_out.append(f"#{s.index} {s.type} ({name or 'unknown codec'}): cannot be copied")
        else:
            candidates.append(s)
    why = ""
    for attempt in ("all", "none"):  # "none": the muxer refused a copied stream; video alone
        dropped, extra = list(left_out), []
        out = av.open(str(dst), "w", format=muxer,
                      options={"movflags": "+faststart"} if muxer in ("mp4", "mov") else {})
        try:
            supported = out.supported_codecs
            if codec not in supported:
                raise VideoError(f"--codec {codec} cannot be stored in {suffix} (it takes: "
                                 f"{', '.join(c for c in COMMON_ENCODERS if c in supported) or 'none of ours'})")
            _add_video_stream(out, vin, codec, settings, upscaler, extra, turns)
            copies = {}
            for s in candidates:
                name = _codec_id_name(s)
                if attempt == "none":
                    dropped.append(f"#{s.index} {s.type} ({name}): the muxer refused the copy ({why})")
                elif name not in supported:
                    dropped.append(f"#{s.index} {s.type} ({name}): {suffix} does not take this codec")
                else:
                    o = out.add_stream_from_template(s)
                    _copy_tags(s.metadata, o.metadata)
                    if hasattr(s, "disposition"):  # PyAV 14.0 has no stream.disposition
                        o.disposition = s.disposition
                    copies[s.index] = o
            _copy_tags(inp.metadata, out.metadata)
            _copy_chapters(av, inp, out, src, extra)
            try:
                out.start_encoding()
            except av.FFmpegError as exc:
                if attempt == "all" and copies:
                    why = _ffmpeg_reason(exc)
                    _close_quietly(av, out)
                    continue
                raise VideoError(f"cannot start encoding with {codec} ({_ffmpeg_reason(exc)})") from None
            break
        except BaseException:
            _close_quietly(av, out)
            raise
    notes.extend(n if n.startswith(str(src)) else f"{src}: {n}" for n in extra)
    if dropped:
        notes.append(f"{src}: stream(s) not copied to the output: " + "; ".join(dropped))
    return out, copies


def _copy_chapters(av, inp, out, src: Path, notes: list[str]) -> None:
    if not (hasattr(inp, "chapters") and hasattr(out, "set_chapters")):  # PyAV 14.0 has neither
        notes.append(f"{src}: chapters not copied (PyAV {av.__version__} cannot copy them; a newer one can)")
        return
    try:
        chapters = inp.chapters()
        if chapters:
            out.set_chapters(chapters)
    except (av.FFmpegError, ValueError) as exc:  # ValueError: a title that is not UTF-8
        notes.append(f"{src}: chapters not copied ({_describe(exc)})")


def _codec_is_lossless(codec: str) -> bool:
    import av

    try:
        found = av.Codec(codec, "w")
    except ValueError:  # av.codec.codec.UnknownCodecError
        return False
    return bool(found.lossless) and not found.lossy


def _add_video_stream(out, vin, codec, settings, upscaler, notes, turns):
    scale = int(getattr(upscaler, "scale", 4))
    icc = vin.codec_context
    options = {}
    if codec in CRF_RANGE:
        crf = min(settings.crf, CRF_RANGE[codec])
        if crf != settings.crf:
            notes.append(f"--crf {settings.crf} is above {codec}'s range (0-{crf}); {crf} used")
        options["crf"] = str(crf)
        if codec in ("libvpx-vp9", "libvpx"):
            options["b"] = "0"          # constant quality, no bitrate cap
        if codec == "libx265":
            options["x265-params"] = "log-level=error"   # x265 logs to stderr by itself
    elif not _codec_is_lossless(codec):
        notes.append(f"--crf does not apply to {codec}; the encoder's own default quality is used "
                     f"(constant quality: {', '.join(c for c in CRF_RANGE if c in COMMON_ENCODERS)})")
    rate = _frame_rate(vin)
    if codec == "libsvtav1" and "SVT_LOG" not in os.environ:
        os.environ["SVT_LOG"] = "1"   # SVT-AV1 prints its banner to stderr unless told otherwise
    vout = out.add_stream(codec, rate=rate, options=options)
    cc = vout.codec_context
    cc.width, cc.height = icc.width * scale, icc.height * scale
    if turns % 2:
        cc.width, cc.height = cc.height, cc.width
    cc.pix_fmt = PIXEL_FORMAT
    cc.time_base = vin.time_base or Fraction(1, 90000)   # frames keep their own pts
    vout.time_base = cc.time_base
    cc.framerate = rate
    if icc.sample_aspect_ratio:
        sar = Fraction(icc.sample_aspect_ratio)
        cc.sample_aspect_ratio = 1 / sar if turns % 2 and sar else sar
    cc.colorspace = _output_matrix(icc.colorspace)[1]
    cc.color_range = 1  # AVCOL_RANGE_MPEG: limited, what yuv420p players expect
    cc.color_primaries = icc.color_primaries
    cc.color_trc = icc.color_trc
    _copy_tags(vin.metadata, vout.metadata)
    return vout


# AVColorSpace (a stream's or frame's tag) -> the swscale matrix converting with it.
_SWS_MATRIX = {1: "ITU709", 4: "FCC", 5: "ITU601", 6: "ITU601", 7: "SMPTE240M", 9: "BT2020", 10: "BT2020"}


def _input_matrix(colorspace: int, height: int) -> str:
    """The matrix a frame is decoded with: its tag; untagged, BT.601 below 720 lines and
    BT.709 from there, as players do."""
    return _SWS_MATRIX.get(int(colorspace), "ITU601" if height < 720 else "ITU709")


def _output_matrix(colorspace: int) -> tuple[str, int]:
    """(swscale matrix, AVColorSpace tag) of the output: the input's; BT.709 for untagged input
    (players assume it for HD frames, and the output is tagged so nobody has to guess)."""
    c = int(colorspace)
    return (_SWS_MATRIX[c], c) if c in _SWS_MATRIX else ("ITU709", 1)


def _tag_seconds(text) -> float | None:
    """'HH:MM:SS.fraction' (Matroska's DURATION tag) -> seconds."""
    try:
        h, m, sec = str(text).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except (ValueError, TypeError):
        return None


def _is_deep(frame) -> bool:
    return max((c.bits for c in frame.format.components), default=0) > 8


def _to_rgb(frame) -> np.ndarray:
    """(H, W, 3) RGB: uint8, or uint16 for pixel formats deeper than 8 bits, converted with the
    matrix and range the frame declares (an unspecified range is limited, as in FFmpeg)."""
    kwargs = {"format": "rgb48le" if _is_deep(frame) else "rgb24",
              "src_colorspace": _input_matrix(frame.colorspace, frame.height)}
    if frame.color_range:
        kwargs["src_color_range"] = int(frame.color_range)
    return frame.to_ndarray(**kwargs)


@torch.inference_mode()
def _upscale_batch(upscaler, frames: list[np.ndarray]) -> np.ndarray:
    """(N, H, W, 3) uint8/uint16 RGB -> (N, sH, sW, 3) uint8 RGB, converted where the model
    ran (a quarter of the float output's size crosses to the host and waits in the queue)."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    x = x.float().div_(65535.0 if frames[0].dtype == np.uint16 else 255.0)
    sr = upscaler(x)
    if not torch.isfinite(sr).all():
        # Clamping would turn Inf into white and leave NaN: never write that silently.
        raise VideoError("the model output has NaN or Inf values; nothing written")
    return sr.clamp_(0, 1).mul_(255).round_().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ---- the pipeline: decode thread -> model (calling thread) -> encode thread ------------------

@dataclass
class _Frame:
    """A decoded frame of the upscaled stream, turned upright: (H, W, 3) uint8 or uint16 RGB,
    with its presentation time and duration (in the stream's time base)."""
    rgb: np.ndarray
    pts: int
    duration: int | None


@dataclass
class _Packet:
    """A packet of a copied stream, passed through in demux order."""
    packet: object


@dataclass
class _Upscaled:
    """A batch from the model to the encoder: its frames upscaled ((N, sH, sW, 3) uint8, N the
    number of frames among ``items``; None when there are none) and its items in demux order."""
    pixels: np.ndarray | None
    items: list  # of _Frame | _Packet


@dataclass(frozen=True)
class _Transcode:
    """What the stages of one video's pipeline share."""
    av: object
    inp: object                 # the input container
    vin: object                 # its video stream that is upscaled
    out: object                 # the output container, header written
    copies: dict                # input stream index -> output stream, for the copied streams
    upscaler: Callable
    src: Path
    settings: VideoSettings
    notes: list[str]
    turns: int                  # quarter turns that show the frames upright (np.rot90's k)

    @property
    def time_base(self) -> Fraction:
        return self.vin.time_base or Fraction(1, 90000)

    @property
    def step(self) -> int:
        """One frame, in the time base: the pts given to frames without one."""
        return max(1, round(1 / (_frame_rate(self.vin) * self.time_base)))

    def total_frames(self) -> int | None:
        """The frame count the file declares or its duration implies (for the progress bar)."""
        vin, inp = self.vin, self.inp
        if vin.frames:
            return vin.frames
        if inp.duration and vin.average_rate:
            return int(round(inp.duration / 1_000_000 * float(vin.average_rate))) or None
        return None


class _Channel:
    """The bounded queues joining the stages, the stop flag they all watch and the first failure
    of each stage. ``put``/``get`` raise ``_Stopped`` once the flag is set."""

    STAGES = ("decode", "model", "encode")  # a failure of an earlier stage explains later ones

    def __init__(self, batch_frames: int):
        self.stop = threading.Event()
        self.decoded: queue.Queue = queue.Queue(maxsize=2 * batch_frames)  # _Frame / _Packet / _END
        self.upscaled: queue.Queue = queue.Queue(maxsize=2)                # _Upscaled / _END
        self.failures: dict[str, BaseException] = {}

    def put(self, q: queue.Queue, item) -> None:
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def get(self, q: queue.Queue):
        while True:
            if self.stop.is_set():
                raise _Stopped
            try:
                return q.get(timeout=0.1)
            except queue.Empty:
                continue

    def fail(self, stage: str, exc: BaseException) -> None:
        self.failures.setdefault(stage, exc)
        self.stop.set()

    def run_stage(self, stage: str, body: Callable[[], None]) -> None:
        """A thread's body: any failure is kept (raised by the caller after the join) and stops
        the other stages."""
        try:
            body()
        except _Stopped:
            pass
        except BaseException as exc:  # noqa: BLE001 (kept and raised in the calling thread)
            self.fail(stage, exc)

    def raise_failure(self, av) -> None:
        for stage in self.STAGES:
            if stage in self.failures:
                exc = self.failures[stage]
                if isinstance(exc, av.FFmpegError):
                    raise VideoError(f"{stage} error ({_ffmpeg_reason(exc)})") from None
                raise exc


class _DecodeStage:
    """Demuxes the input; decodes the video stream to upright RGB ``_Frame``s and passes the
    copied streams' packets through as ``_Packet``s, in demux order; ``_END`` when done."""

    def __init__(self, job: _Transcode, channel: _Channel):
        self.job, self.channel = job, channel
        self.count, self.last_pts, self.shape = 0, None, None

    def run(self) -> None:
        job = self.job
        job.vin.thread_type = "AUTO"   # frame and slice threads in the decoder
        streams = [job.vin] + [job.inp.streams[i] for i in job.copies]
        try:
            for packet in job.inp.demux(streams):
                if packet.stream.index == job.vin.index:
                    for frame in packet.decode():
                        self.channel.put(self.channel.decoded, self._frame(frame))
                elif packet.size and (packet.dts is not None or packet.pts is not None):
                    if packet.dts is None:   # some demuxers leave it unset on subtitles
                        packet.dts = packet.pts
                    self.channel.put(self.channel.decoded, _Packet(packet))
        except job.av.FFmpegError as exc:
            raise VideoError(f"decode error after {self.count} frame(s) ({_ffmpeg_reason(exc)})") from None
        if self.count == 0:
            raise VideoError("the video stream has no decodable frames")
        self._note_missing_frames()
        self.channel.put(self.channel.decoded, _END)

    def _frame(self, frame) -> _Frame:
        rgb = _to_rgb(frame)
        if self.job.turns:
            rgb = np.ascontiguousarray(np.rot90(rgb, self.job.turns))
        self._check_shape(frame, rgb)
        pts = frame.pts
        if pts is None:
            pts = 0 if self.last_pts is None else self.last_pts + self.job.step
        self.last_pts = pts
        self.count += 1
        return _Frame(rgb, pts, frame.duration)

    def _check_shape(self, frame, rgb: np.ndarray) -> None:
        """The first frame's notes (alpha dropped, deep colour); later frames must match its size."""
        src, shape = self.job.src, self.shape
        if shape is None:
            self.shape = rgb.shape
            if len(frame.format.components) == 4:
                self.job.notes.append(f"{src}: {frame.format.name} frames have an alpha channel; "
                                      f"it is not kept ({PIXEL_FORMAT} has none)")
            if rgb.dtype == np.uint16:
                self.job.notes.append(f"{src}: {frame.format.name} frames (more than 8 bits) are "
                                      f"upscaled from 16-bit RGB and written as 8-bit {PIXEL_FORMAT}")
        elif rgb.shape != shape:
            raise VideoError(f"frame {self.count} is {rgb.shape[1]}x{rgb.shape[0]}, earlier "
                             f"frames {shape[1]}x{shape[0]}: a frame size change "
                             "mid-stream is not supported")

    def _note_missing_frames(self) -> None:
        vin, src = self.job.vin, self.job.src
        if vin.frames and self.count < vin.frames:
            self.job.notes.append(f"{src}: {self.count} of the {vin.frames} frames the file declares could be "
                                  "decoded (truncated file?); the output has these")
        elif not vin.frames:
            self._note_short()

    def _note_short(self) -> None:
        """Containers without a frame count (Matroska, WebM): compare where the video ends
        with the duration the file declares for it (its DURATION tag), or for the file (with
        a margin: other streams may run longer)."""
        job = self.job
        vin, time_base, step = job.vin, job.time_base, job.step
        start = float((vin.start_time or 0) * time_base)
        ended = float((self.last_pts + step) * time_base) - start
        frame = float(step * time_base)
        declared, margin = _tag_seconds(vin.metadata.get("DURATION")), 2 * frame
        if declared is None and vin.duration:
            declared = float(vin.duration * time_base)
        if declared is None and job.inp.duration:
            declared, margin = job.inp.duration / 1_000_000 - start, 0.5 + 2 * frame
        if declared is not None and declared - ended > margin:
            job.notes.append(f"{job.src}: the video ends at {ended:.2f} s but the file declares {declared:.2f} s "
                             f"(truncated file?); the output has the {self.count} decodable frames")


class _ModelStage:
    """In the calling thread: gathers ``batch_frames`` frames (with the packets between them),
    upscales them and hands the batch on as ``_Upscaled``; ``_END`` when done."""

    def __init__(self, job: _Transcode, channel: _Channel):
        self.job, self.channel = job, channel
        self.pending: list = []              # _Frame / _Packet, in order
        self.frames: list[np.ndarray] = []   # the RGB of the _Frames among them

    def run(self) -> None:
        batch = self.job.settings.batch_frames
        while True:
            item = self.channel.get(self.channel.decoded)
            if item is _END:
                self._flush()
                self.channel.put(self.channel.upscaled, _END)
                return
            self.pending.append(item)
            if isinstance(item, _Frame):
                if self.frames and item.rgb.shape != self.frames[0].shape:
                    raise VideoError("frame size changed mid-stream")  # the decoder says so first
                self.frames.append(item.rgb)
                if len(self.frames) >= batch:
                    self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        pixels = _upscale_batch(self.job.upscaler, self.frames) if self.frames else None
        self.channel.put(self.channel.upscaled, _Upscaled(pixels, list(self.pending)))
        self.pending.clear()
        self.frames.clear()


class _EncodeStage:
    """Encodes the upscaled frames (8-bit, the output's matrix, each with its input frame's
    pts and duration) and muxes them with the copied packets, in order; flushes the encoder."""

    def __init__(self, job: _Transcode, channel: _Channel, bar):
        self.job, self.channel, self.bar = job, channel, bar
        self.vout = job.out.streams.video[0]
        self.matrix = _output_matrix(job.vin.codec_context.colorspace)[0]

    def run(self) -> None:
        out = self.job.out
        while True:
            batch = self.channel.get(self.channel.upscaled)
            if batch is _END:
                break
            k = 0
            for item in batch.items:
                if isinstance(item, _Frame):
                    self._encode(batch.pixels[k], item)
                    k += 1
                else:
                    packet = item.packet
                    packet.stream = self.job.copies[packet.stream.index]
                    out.mux(packet)
            if self.bar is not None:
                self.bar.update(k)
        for p in self.vout.encode(None):
            out.mux(p)

    def _encode(self, pixels: np.ndarray, item: _Frame) -> None:
        frame = self.job.av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24")
        frame = frame.reformat(format=PIXEL_FORMAT, src_colorspace=self.matrix,
                               dst_colorspace=self.matrix, dst_color_range="MPEG")
        frame.pts, frame.time_base = item.pts, self.job.time_base
        if item.duration:
            frame.duration = item.duration
        for p in self.vout.encode(frame):
            self.job.out.mux(p)


def _progress_bar(job: _Transcode):
    if not job.settings.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=job.total_frames(), desc=Path(job.src).name, unit="frame", leave=False,
                file=sys.stderr, dynamic_ncols=True)


def _pipeline(job: _Transcode) -> None:
    """Decode, upscale and encode ``job``'s video: the decode and encode stages in their own
    threads, the model in this one. The first failure (by stage order) is raised once all
    stages have stopped; Ctrl-C stops them too."""
    channel = _Channel(job.settings.batch_frames)
    bar = _progress_bar(job)
    decoder = threading.Thread(target=channel.run_stage, args=("decode", _DecodeStage(job, channel).run),
                               name="esr-video-decode", daemon=True)
    encoder = threading.Thread(target=channel.run_stage, args=("encode", _EncodeStage(job, channel, bar).run),
                               name="esr-video-encode", daemon=True)
    decoder.start()
    encoder.start()
    try:
        _ModelStage(job, channel).run()
        encoder.join()
    except _Stopped:
        pass
    except Exception as exc:  # kept, and raised below once the stages have stopped
        channel.fail("model", exc)
    finally:  # KeyboardInterrupt goes on from here, the stages stopped
        channel.stop.set()  # on the normal path both stages have finished already
        encoder.join()
        decoder.join()
        if bar is not None:
            bar.close()
    channel.raise_failure(job.av)
