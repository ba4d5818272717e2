"""The ``esr`` command: ``eval``, ``upscale``, ``info``, ``backends``."""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

import torch

from . import MODEL_NAMES
from .images import IMAGE_SUFFIXES, ImageReadError, read_image, write_image
from .upscaler import DTYPES, Upscaler


def _load_model(args) -> torch.nn.Module:
    from .loading import load

    if getattr(args, "fused", False):
        from .fusion import load_fused

        model = load_fused(args.model, device=args.device, backend=args.backend)
        print(f"fused backend: {model.backend}", file=sys.stderr)
        return model
    return load(args.model, device=args.device)


def expand_inputs(items: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images, not recursive) and glob patterns -> (files, errors)."""
    files, errors = [], []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                errors.append(f"{item}: folder has no images")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        elif glob.has_magic(item):
            found = sorted(Path(q) for q in glob.glob(item) if Path(q).is_file())
            if not found:
                errors.append(f"{item}: pattern matched no files")
            files.extend(found)
        else:
            errors.append(f"{item}: no such file or folder")
    unique = list(dict.fromkeys(files))
    return unique, errors


def output_path(src: Path, outdir: Path, suffix: str, taken: set[Path]) -> Path:
    """``<outdir>/<stem><suffix>.png``; a name already used in this run gets the source
    extension added so that a.jpg and a.png do not overwrite each other."""
    out = outdir / f"{src.stem}{suffix}.png"
    if out.resolve() in taken:
        out = outdir / f"{src.stem}_{src.suffix.lstrip('.')}{suffix}.png"
    return out


def cmd_upscale(args) -> int:
    files, errors = expand_inputs(args.inputs)
    for e in errors:
        print(f"error: {e}", file=sys.stderr)
    if not files:
        print("error: nothing to upscale", file=sys.stderr)
        return 1
    outdir = Path(args.output)
    outdir.mkdir(parents=True, exist_ok=True)
    inputs = {f.resolve() for f in files}
    upscaler = Upscaler(_load_model(args), device=args.device, dtype=DTYPES[args.dtype],
                        tile=args.tile, tile_overlap=args.tile_overlap)
    taken: set[Path] = set()
    failures = len(errors)
    from tqdm import tqdm

    bar = tqdm(files, desc="upscaling", unit="img", disable=args.quiet or None, file=sys.stderr)
    for src in bar:
        dst = output_path(src, outdir, args.suffix, taken)
        if dst.resolve() in inputs:
            print(f"error: {src}: output {dst} would overwrite an input; skipped", file=sys.stderr)
            failures += 1
            continue
        taken.add(dst.resolve())
        try:
            img = read_image(src)
            write_image(dst, upscaler.upscale_image(img))
        except (ImageReadError, ValueError) as exc:
            tqdm.write(f"error: {src}: {exc}", file=sys.stderr)
            failures += 1
            continue
    done = len(files) - (failures - len(errors))
    print(f"{done} upscaled, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


def cmd_eval(args) -> int:
    from .evaluation.protocol import evaluate_images, list_images, summarise

    upscaler = Upscaler(_load_model(args), device=args.device, dtype=DTYPES[args.dtype])
    records = []
    for rec in evaluate_images(list_images(args.hr), upscaler, with_ssim=not args.no_ssim):
        records.append(rec)
        if not args.json:
            extra = f"  SSIM {rec['ssim']:.4f}" if "ssim" in rec else ""
            print(f"{rec['image']:<24} PSNR {rec['psnr']:.3f} dB  PSNR-Y {rec['psnr_y']:.3f} dB{extra}")
    summary = summarise(records)
    if args.json:
        print(json.dumps({"model": args.model, "hr": str(args.hr), "fused": bool(args.fused),
                          **summary, "per_image": records}))
    else:
        extra = f"  SSIM {summary['ssim']:.4f}" if "ssim" in summary else ""
        print(f"{'mean':<24} PSNR {summary['psnr']:.3f} dB  PSNR-Y {summary['psnr_y']:.3f} dB{extra}")
    return 0


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
    p.add_argument("--model", default="ifadnet", choices=MODEL_NAMES, help="model name (default: ifadnet)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--fused", action="store_true", help="run the fused esr_kernels path")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "cuda", "cpu"],
                   help="fused backend (with --fused)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="esr", description="Efficient x4 super-resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upscale", help="upscale images x4")
    up.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    up.add_argument("-o", "--output", required=True, help="output folder")
    _add_model_args(up)
    up.add_argument("--tile", type=int, default=None, help="tile size in input pixels (default: whole image)")
    up.add_argument("--tile-overlap", type=int, default=16, help="overlap between tiles in input pixels")
    up.add_argument("--suffix", default="_x4", help="added to output file names (default: _x4)")
    up.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
