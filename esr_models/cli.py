"""The ``esr`` command: ``eval``, ``upscale``, ``info``, ``backends``, and the parser that adds
the other commands (train, export, gpu-check, selftest, roofline) from their modules. What they
share (UsageError, device and model loading, the error policy) is in cli_common.py.

Exit codes: 0 everything done (files skipped because their output exists count as done);
1 some inputs failed (each reported by name, the rest still ran), or a bug (an unexpected
exception: its traceback is shown); 2 a usage or setup error found before any file was touched
(bad options, no model, no device)."""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import torch

import esr_kernels

from . import export, gpu_check_cmd, ray_upscale, roofline_cmd, selftest
from .batch import Report, run_job, triage
from .cli_common import UsageError, check_device, load_model, output_extension, run  # noqa: F401  (re-exported)
from .complexity import count_flops, count_parameters
from .evaluation.protocol import evaluate_images, left_out_entries, list_images, summarise
from .images import DEFAULT_MAX_PIXELS, IMAGE_SUFFIXES
from .loading import MODEL_NAMES, load, min_input_size
from .media import VIDEO_SUFFIXES, is_video
from .outputs import check_suffix, default_suffix, is_temp_file, plan_outputs
from .sample import SAMPLE_PATH
from .training import cli as training_cli
from .upscaler import DTYPES, Upscaler
from .video import DEFAULT_BATCH_FRAMES, DEFAULT_CRF, batch_frames_arg, codec_arg, crf_arg, upscale_video


def _model_of(args) -> torch.nn.Module:
    """The model ``--model``, ``--device``, ``--dtype``, ``--fused`` and ``--backend`` ask for."""
    return load_model(args.model, args.device, args.dtype, args.fused, args.backend)


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
    files, errors, notes = expand_inputs(args.inputs + ([str(SAMPLE_PATH)] if args.sample else []))
    for n in notes:
        print(f"note: {n}", file=sys.stderr)
    if not files:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print("error: nothing to upscale", file=sys.stderr)
        return 2
    if any(getattr(args, k, None) for k in ("ray", "ray_workers", "ray_cpus_per_worker")):  # on Ray
        return ray_upscale.upscale_on_ray(args, files, errors)
    outdir = Path(args.output)
    upscaler = Upscaler(_model_of(args), device=args.device, dtype=DTYPES[args.dtype],
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
        for job in tqdm(todo, desc="upscaling", unit="file", disable=args.quiet or None, file=sys.stderr):
            upscaler.notify = lambda msg, src=job.src: tqdm.write(f"note: {src}: {msg}", file=sys.stderr)
            if is_video(job.src):
                report.add(upscale_video(upscaler, job, args))  # never raises: failures are outcomes
            else:
                report.add(run_job(upscaler.upscale_image, job, args.overwrite, args.max_pixels))
    except KeyboardInterrupt:
        # The file in progress left nothing under its final name (write_atomically): say what
        # was done, then exit 130 as an interrupted command does.
        report.finish(interrupted=len(todo) - (sum(report.counts.values()) - before))
        return 130
    return report.finish()


def cmd_eval(args) -> int:
    upscaler = Upscaler(_model_of(args), device=args.device, dtype=DTYPES[args.dtype])
    files, skipped = list_images(args.hr)
    for s in skipped:
        print(f"note: {s}", file=sys.stderr)
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
    up.add_argument("--codec", type=codec_arg, default=None,
                    help="video encoder (default: libx264, libvpx-vp9 for .webm; e.g. libx265, libsvtav1)")
    up.add_argument("--crf", type=crf_arg, default=DEFAULT_CRF,
                    help=f"video constant quality, lower is better (default {DEFAULT_CRF}; 0 is lossless "
                         "with libx264; range 0-51 for x264/x265, 0-63 for vp9/av1)")
    up.add_argument("--batch-frames", type=batch_frames_arg, default=DEFAULT_BATCH_FRAMES,
                    help=f"video frames per model call (default {DEFAULT_BATCH_FRAMES})")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    ray_upscale.add_arguments(up)
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
    for command in (training_cli, export, gpu_check_cmd, selftest, roofline_cmd):
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
