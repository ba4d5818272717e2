"""The ``esr`` command: ``eval``, ``upscale``, ``info``, ``backends``.

Exit codes: 0 everything done (files skipped because their output exists count as done);
1 some inputs failed (each reported by name, the rest still ran); 2 a usage or setup error
found before any file was touched (bad options, no model, no device)."""
from __future__ import annotations

import argparse
import glob
import json
import sys
import warnings
from pathlib import Path

import torch

from . import MODEL_NAMES
from .batch import Report, run_job, triage
from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from .outputs import check_suffix, default_suffix, is_temp_file, plan_outputs
from .video import VIDEO_SUFFIXES
from .upscaler import DTYPES, Upscaler


class UsageError(ValueError):
    """An option or setup problem: reported in one line before anything is written."""


def check_device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name!r} is not a device name ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        why = "this torch is a CPU-only build" if torch.version.cuda is None else "no CUDA device is visible"
        raise UsageError(f"--device {name}: CUDA is not available ({why}); use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UsageError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"--device {name}: only cpu and cuda are supported")
    return device


def _load_model(args) -> torch.nn.Module:
    """The model the options ask for, on its device and dtype; for --fused, through the same
    backend resolution as ``esr_models.load(fused=True)``, and says which backend runs."""
    from .loading import load

    device, dtype = check_device(args.device), DTYPES[args.dtype]
    if not getattr(args, "fused", False):
        return load(args.model, device=device, dtype=dtype)
    from esr_kernels.policy import resolve_backend

    from .loading import load_fused

    try:
        resolve_backend(args.backend, device, dtype)
    except RuntimeError as exc:
        raise UsageError(f"--fused --backend {args.backend}: {exc}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = load_fused(args.model, device=device, dtype=dtype, backend=args.backend)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"fused backend: {model.backend}", file=sys.stderr)
    return model


def check_environment() -> None:
    """Every environment variable the tool reads, checked once before anything is done: a bad
    value is a usage error naming the variable (not a failure of every file later)."""
    import os

    from .memory import memory_cap_bytes

    try:
        memory_cap_bytes()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    text = os.environ.get("ESR_CPU_CACHE_MB", "").strip()
    if text and not text.isdigit():
        raise UsageError(f"environment variable ESR_CPU_CACHE_MB={text!r}: expected a whole number of "
                         "megabytes (0 or more; default 1024)")
    text = os.environ.get("ESR_CPU_CONV_ENGINE", "").strip()
    if text and text not in ("0", "1"):
        raise UsageError(f"environment variable ESR_CPU_CONV_ENGINE={text!r}: expected 0 or 1")
    for name in ("ESR_WEIGHTS_DIR", "ESR_CACHE_DIR"):
        value = os.environ.get(name)
        if value and os.path.lexists(value) and not os.path.isdir(value):
            raise UsageError(f"environment variable {name}={value!r}: not a folder")


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


def cmd_upscale(args) -> int:
    _check_upscale_options(args)
    if not args.inputs and not args.sample:
        raise UsageError("nothing to upscale: give image files, folders or patterns (or --sample)")
    from .sample import SAMPLE_PATH

    files, errors, notes = expand_inputs(args.inputs + ([str(SAMPLE_PATH)] if args.sample else []))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not files:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print("error: nothing to upscale", file=sys.stderr)
        return 2
    if any(getattr(args, k, None) for k in ("ray", "ray_workers", "ray_cpus_per_worker")):  # on Ray
        from .ray_upscale import upscale_on_ray

        return upscale_on_ray(args, files, errors)
    outdir = Path(args.output)
    upscaler = Upscaler(_load_model(args), device=args.device, dtype=DTYPES[args.dtype],
                        tile=args.tile, tile_overlap=args.tile_overlap, auto_tile=args.tile is None)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {outdir}: {exc.strerror or exc}") from None
    from tqdm import tqdm

    report = Report(write=lambda line: tqdm.write(line, file=sys.stderr))
    for e in errors:
        report.fail(e)
    suffix = default_suffix(upscaler.scale) if args.suffix is None else args.suffix
    jobs, earlier = plan_outputs(files, outdir, suffix, out_ext=_output_extension, scale=upscaler.scale)
    todo, decided = triage(jobs, earlier, overwrite=args.overwrite)
    for outcome in decided:
        report.add(outcome)
    before = sum(report.counts.values())
    try:
        for job in tqdm(todo, desc="upscaling", unit="file", disable=args.quiet or None, file=sys.stderr):
            upscaler.notify = lambda msg, src=job.src: tqdm.write(f"note: {src}: {msg}", file=sys.stderr)
            if _is_video(job.src):
                from .video import upscale_video  # never raises: failures are outcomes

                report.add(upscale_video(upscaler, job, args))
            else:
                report.add(run_job(upscaler.upscale_image, job, args.overwrite, args.max_pixels))
    except KeyboardInterrupt:
        # The file in progress left nothing under its final name (write_atomically): say what
        # was done, then exit 130 as an interrupted command does.
        report.finish(interrupted=len(todo) - (sum(report.counts.values()) - before))
        return 130
    return report.finish()


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _output_extension(src: Path) -> str:
    """Images become PNG (lossless, 16-bit and alpha capable); videos keep their container."""
    return src.suffix.lower() if _is_video(src) else ".png"


def cmd_eval(args) -> int:
    from .evaluation.protocol import evaluate_images, list_images, summarise

    upscaler = Upscaler(_load_model(args), device=args.device, dtype=DTYPES[args.dtype])
    files, skipped = list_images(args.hr)
    for s in skipped:
        print(f"note: {s}", file=sys.stderr)
    from .evaluation.protocol import left_out_entries

    left_out = [{"image": name, "error": why} for name, why in left_out_entries(args.hr)]
    records, failures = [], []
    for rec in evaluate_images(files, upscaler, scale=upscaler.scale, with_ssim=not args.no_ssim,
                               min_size=upscaler.min_size):
        if "error" in rec:
            failures.append(rec)
            print(f"error: {rec['image']}: {rec['error']}", file=sys.stderr)
            continue
        records.append(rec)
        if not args.json:
            extra = f"  SSIM {rec['ssim']:.4f}" if "ssim" in rec else ""
            print(f"{rec['image']:<24} PSNR {rec['psnr']:.3f} dB  PSNR-Y {rec['psnr_y']:.3f} dB{extra}")
    if not records:
        print(f"error: no image of {args.hr} could be evaluated", file=sys.stderr)
        return 1
    summary = summarise(records)
    if args.json:
        print(json.dumps({"model": args.model, "hr": str(args.hr), "fused": bool(args.fused),
                          **summary, "images": len(records), "failed": failures, "left_out": left_out,
                          "per_image": records}))
    else:
        extra = f"  SSIM {summary['ssim']:.4f}" if "ssim" in summary else ""
        odd = ""
        if left_out:  # entries named like images that are not image files: named and counted
            n = len(left_out)
            odd = (f"; {n} entr{'y' if n == 1 else 'ies'} named like images left out (not regular files): "
                   + ", ".join(e["image"] for e in left_out))
        print(f"{'mean':<24} PSNR {summary['psnr']:.3f} dB  PSNR-Y {summary['psnr_y']:.3f} dB{extra}"
              f"  (over {len(records)} of {len(records) + len(failures)} images){odd}")
    return 1 if failures or left_out else 0


def cmd_info(args) -> int:
    from .complexity import count_flops, count_parameters
    from .loading import load, min_input_size

    model = load(args.model)
    info = {"model": args.model, "architecture": type(model).__name__,
            "parameters": count_parameters(model), "flops_256x256": count_flops(model, 256, 256),
            "scale": model.scale, "min_input_size": min_input_size(model)}
    if args.json:
        print(json.dumps(info))
    else:
        print(f"{info['architecture']} ({args.model})\n"
              f"  parameters        {info['parameters'] / 1e6:.4f} M\n"
              f"  FLOPs @256x256    {info['flops_256x256'] / 1e9:.3f} G (conv MACs, challenge convention)\n"
              f"  scale             x{info['scale']}\n"
              f"  min input size    {info['min_input_size']}x{info['min_input_size']}")
    return 0


def cmd_backends(args) -> int:
    import esr_kernels

    print(json.dumps(esr_kernels.available_backends(), indent=2))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="ifadnet", help=f"model name ({', '.join(MODEL_NAMES)}; default: "
                   "ifadnet) or the path of a checkpoint file")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--fused", action="store_true", help="run the fused esr_kernels path")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "cuda", "cpu"],
                   help="fused backend (with --fused)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esr", description="Efficient x4 super-resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale images x4")
    up.add_argument("inputs", nargs="*", help="image or video files, folders or glob patterns")
    up.add_argument("--sample", action="store_true",
                    help="also upscale the sample image shipped with the package (sample.png)")
    up.add_argument("-o", "--output", required=True, help="output folder")
    _add_model_args(up)
    up.add_argument("--tile", type=int, default=None,
                    help="tile size in input pixels (default: whole image, tiled automatically when "
                         "it would not fit in memory)")
    up.add_argument("--tile-overlap", type=int, default=16, help="overlap between tiles in input pixels")
    up.add_argument("--suffix", default=None,
                    help="added to output file names (default: _x<scale>, the model's scale: _x4, or _x2 for a x2 "
                         "checkpoint)")
    up.add_argument("--overwrite", action="store_true",
                    help="replace existing output files (default: skip them; inputs are never replaced)")
    up.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                    help=f"refuse input images with more pixels (default {DEFAULT_MAX_PIXELS:,}, "
                         "Pillow's decompression-bomb limit; 0: no limit)")
    from .video import DEFAULT_BATCH_FRAMES, DEFAULT_CRF, batch_frames_arg, codec_arg, crf_arg

    up.add_argument("--codec", type=codec_arg, default=None,
                    help="video encoder (default: libx264, libvpx-vp9 for .webm; e.g. libx265, libsvtav1)")
    up.add_argument("--crf", type=crf_arg, default=DEFAULT_CRF,
                    help=f"video constant quality, lower is better (default {DEFAULT_CRF}; 0 is lossless "
                         "with libx264; range 0-51 for x264/x265, 0-63 for vp9/av1)")
    up.add_argument("--batch-frames", type=batch_frames_arg, default=DEFAULT_BATCH_FRAMES,
                    help=f"video frames per model call (default {DEFAULT_BATCH_FRAMES})")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    from .ray_upscale import add_arguments as _add_ray_args; _add_ray_args(up)
    up.set_defaults(func=cmd_upscale)

    ev = sub.add_parser("eval", help="PSNR/SSIM on a folder of HR images (LR made by bicubic)")
    ev.add_argument("--hr", required=True, help="folder of HR images")
    _add_model_args(ev)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--no-ssim", action="store_true", help="skip SSIM (faster)")
    ev.set_defaults(func=cmd_eval)

    info = sub.add_parser("info", help="parameters, FLOPs and minimum input size of a model")
    info.add_argument("--model", default="ifadnet", choices=MODEL_NAMES)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)

    be = sub.add_parser("backends", help="which fused-kernel backends this install has")
    be.set_defaults(func=cmd_backends)
    from .training.cli import add_parser as _add_train; _add_train(sub)
    from .export import add_parser as _add_export; _add_export(sub)
    from esr_kernels.gpu_check import add_parser as _add_gpu_check; _add_gpu_check(sub)
    from .selftest import add_parser as _add_selftest; _add_selftest(sub)
    from esr_kernels.roofline import add_parser as _add_roofline; _add_roofline(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        check_environment()
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (OSError, ValueError, RuntimeError) as exc:  # setup problems: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
