"""``esr upscale``: images and videos (files, folders, glob patterns) -> x4 outputs in a folder,
one file at a time (``io.jobs.run_job``, ``io.video.upscale_video``), or spread over Ray workers
(``upscale_ray``). Exit codes: see ``esr_models.cli``."""
from __future__ import annotations

import contextlib
import glob
import os
import signal
import sys
import threading
from pathlib import Path

from ..infer.upscaler import DTYPES, Upscaler, capped_overlap
from ..io.images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from ..io.jobs import Report, run_job, triage
from ..io.media import VIDEO_SUFFIXES, is_video
from ..io.outputs import check_suffix, default_suffix, is_temp_file, plan_outputs
from ..io.sample import SAMPLE_PATH
from ..io.video import DEFAULT_BATCH_FRAMES, DEFAULT_CRF, batch_frames_arg, codec_arg, crf_arg, upscale_video
from . import upscale_ray
from .common import UsageError, add_model_args, model_of, output_extension


def expand_inputs(items: list[str]) -> tuple[list[Path], list[str], list[str]]:
    """Files, folders (their images, not recursive) and glob patterns -> (files, errors, notes).
    A folder's files with other extensions are counted in a note, never silently dropped."""
    files, errors, notes = [], [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            listing = sorted(p.iterdir())
            entries = [q for q in listing if q.is_file() and not is_temp_file(q)]
            found = [q for q in entries if q.suffix.lower() in IMAGE_SUFFIXES | VIDEO_SUFFIXES]
            others = len(entries) - len(found)
            if others:
                notes.append(f"{item}: {others} file(s) without an image or video extension "
                             f"({', '.join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))}) left out")
            odd = [q.name for q in listing if not q.is_dir() and not q.is_file()]
            if odd:
                notes.append(f"{item}: {len(odd)} entr{'y' if len(odd) == 1 else 'ies'} that are not regular "
                             f"files (broken links, FIFOs, sockets) left out: {', '.join(odd[:5])}")
            temps = [q.name for q in listing if q.is_file() and is_temp_file(q)]
            if temps:
                notes.append(f"{item}: {len(temps)} temporary file(s) of an interrupted run (.esr-tmp-*) left out")
            if not found:
                errors.append(f"{item}: folder has no images")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif p.exists() or p.is_symlink():
            errors.append(f"{item}: not a regular file" + (" (a broken link)" if not p.exists() else ""))
        elif glob.has_magic(item):
            found = sorted(Path(q) for q in glob.glob(item) if Path(q).is_file() and not is_temp_file(Path(q)))
            if not found:
                errors.append(f"{item}: pattern matched no files")
            files.extend(found)
        else:
            errors.append(f"{item}: no such file or folder")
    return files, errors, notes


def _check_upscale_options(args) -> None:
    if args.suffix is not None:
        check_suffix(args.suffix)
    if args.tile is not None and args.tile < 1:
        raise UsageError(f"--tile must be a positive number of pixels, got {args.tile}")
    if args.tile_overlap < 0:
        raise UsageError(f"--tile-overlap must be 0 or more, got {args.tile_overlap}")
    if args.tile is not None and args.tile_overlap >= args.tile:
        raise UsageError(f"--tile-overlap ({args.tile_overlap}) must be smaller than --tile ({args.tile}); "
                         "give a smaller --tile-overlap with a small --tile")
    if args.max_pixels < 0:
        raise UsageError(f"--max-pixels must be positive (0: no limit), got {args.max_pixels}")
    out = Path(args.output)
    for parent in (out, *out.parents):
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"output folder {out}: {parent} exists and is not a folder")
            break
    if args.tile is not None:  # the step between tiles is at least half the tile (capped_overlap)
        args.tile_overlap, note = capped_overlap(args.tile, args.tile_overlap)
        if note:
            print(f"note: {note}", file=sys.stderr)


def cmd_upscale(args) -> int:
    _check_upscale_options(args)
    if not args.inputs and not args.sample:
        raise UsageError("nothing to upscale: give image files, folders or patterns (or --sample)")
    files, errors, notes = expand_inputs(args.inputs + ([str(SAMPLE_PATH)] if args.sample else []))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not files:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print("error: nothing to upscale", file=sys.stderr)
        return 2
    ray_options = ("ray", "ray_workers", "ray_cpus_per_worker", "ray_connect_timeout")
    if any(getattr(args, k, None) for k in ray_options):  # on Ray (upscale_ray refuses options without --ray)
        return upscale_ray.upscale_on_ray(args, files, errors)
    outdir = Path(args.output)
    upscaler = Upscaler(model_of(args), device=args.device, dtype=DTYPES[args.dtype],
                        tile=args.tile, tile_overlap=args.tile_overlap, auto_tile=args.tile is None)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {outdir}: {exc.strerror or exc}") from None
    from tqdm import tqdm  # here, not at the top: only upscaling needs it

    report = Report(write=lambda line: tqdm.write(line, file=sys.stderr))
    for e in errors:
        report.fail(e)
    suffix = default_suffix(upscaler.scale) if args.suffix is None else args.suffix
    jobs, earlier = plan_outputs(files, outdir, suffix, out_ext=output_extension, scale=upscaler.scale)
    todo, decided = triage(jobs, earlier, overwrite=args.overwrite)
    for outcome in decided:
        report.add(outcome)
    before = sum(report.counts.values())
    try:
        with signals_as_interrupts():
            for job in tqdm(todo, desc="upscaling", unit="file", disable=args.quiet or None, file=sys.stderr):
                upscaler.notify = lambda msg, src=job.src: tqdm.write(f"note: {src}: {msg}", file=sys.stderr)
                if is_video(job.src):
                    report.add(upscale_video(upscaler, job, args))  # never raises: failures are outcomes
                else:
                    report.add(run_job(upscaler.upscale_image, job, args.overwrite, args.max_pixels))
    except KeyboardInterrupt as exc:
        # The file in progress left nothing under its final name (write_atomically): say what
        # was done, then exit as an interrupted command does: 128 + the signal's number (130
        # for Ctrl-C, 143 for SIGTERM, 129 for SIGHUP).
        signum = exc.signum if isinstance(exc, Terminated) else signal.SIGINT
        why = "interrupted" if signum == signal.SIGINT else f"interrupted by {signal.Signals(signum).name}"
        report.finish(interrupted=len(todo) - (sum(report.counts.values()) - before), why=why)
        if signum != signal.SIGINT and getattr(args, "as_command", False):
            exit_after_signal(128 + signum)
        return 128 + signum
    return report.finish()


def exit_after_signal(code: int) -> None:
    """End the process with ``code`` now, without unwinding: the run was stopped by SIGTERM or
    SIGHUP, its temporary file is removed and its summary printed. Why: a video interrupted
    mid-encode leaves PyAV objects (held by the exception's frames) that crashed (SIGSEGV,
    status -11 instead of 143) when freed during the unwinding, under load in CI. Ctrl-C keeps
    the ordinary return."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread where Ctrl-C raises KeyboardInterrupt, so that
    the same clean-up runs (temporary file removed, video stages stopped, summary printed)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def signals_as_interrupts(signums=tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))):
    """Within the block, ``signums`` raise ``Terminated`` (once: a second signal during the
    clean-up is ignored, so that the clean-up finishes); the old handlers come back after it.
    Signal handlers can only be set in the main thread: elsewhere the block runs unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired: list[int] = []

    def handler(signum, frame):
        if not fired:
            fired.append(signum)
            raise Terminated(signum)

    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def add_parser(sub) -> None:
    up = sub.add_parser("upscale", help="upscale images x4")
    up.add_argument("inputs", nargs="*", help="image or video files, folders or glob patterns")
    up.add_argument("--sample", action="store_true",
                    help="also upscale the sample image shipped with the package (sample.png)")
    up.add_argument("-o", "--output", required=True, help="output folder")
    add_model_args(up)
    up.add_argument("--tile", type=int, default=None,
                    help="tile size in input pixels (default: whole image, tiled automatically when "
                         "it would not fit in memory)")
    up.add_argument("--tile-overlap", type=int, default=16,
                    help="overlap between tiles in input pixels (default 16; smaller than --tile, and at most "
                         "half of it: a larger overlap is lowered to half the tile, with a note, so that tiles "
                         "step by at least half their size)")
    up.add_argument("--suffix", default=None,
                    help="added to output file names (default: _x<scale>, the model's scale: _x4, or _x2 for a x2 "
                         "checkpoint)")
    up.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (default: skip them; inputs are never replaced)")
    up.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help=f"refuse input images with more pixels (default {DEFAULT_MAX_PIXELS:,}, "
                         "Pillow's decompression-bomb limit; 0: no limit)")
    up.add_argument("--codec", type=codec_arg, default=None,
                    help="video encoder (default: libx264, libvpx-vp9 for .webm; e.g. libx265, libsvtav1)")
    up.add_argument("--crf", type=crf_arg, default=DEFAULT_CRF,
                    help=f"video constant quality, lower is better (default {DEFAULT_CRF}; 0 is lossless "
                         "with libx264; range 0-51 for x264/x265, 0-63 for vp9/av1)")
    up.add_argument("--batch-frames", type=batch_frames_arg, default=DEFAULT_BATCH_FRAMES,
                    help=f"video frames per model call (default {DEFAULT_BATCH_FRAMES})")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    upscale_ray.add_arguments(up)
    up.set_defaults(func=cmd_upscale)
