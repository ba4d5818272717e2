"""``esr eval``: PSNR / SSIM of a model on a folder of HR images (the LR made by bicubic
downscaling, ``esr_models.evaluation.protocol``)."""
from __future__ import annotations

import json
import sys

from ..evaluation.protocol import evaluate_images, left_out_entries, list_images, summarise
from ..infer.upscaler import DTYPES, Upscaler
from .common import add_model_args, model_of


def cmd_eval(args) -> int:
    upscaler = Upscaler(model_of(args), device=args.device, dtype=DTYPES[args.dtype])
    files, skipped = list_images(args.hr)
    for s in skipped:
        print(f"note: {s}", file=sys.stderr)
    left_out = [{"image": name, "error": why} for name, why in left_out_entries(args.hr)]
    records, failures = [], []
    for rec in evaluate_images(files, upscaler, scale=upscaler.scale, with_ssim=not args.no_ssim,
                               min_size=upscaler.min_size):
        if "error" in rec:
            failures.append(rec)
            print(f"error: {_named(rec['image'], rec['error'])}", file=sys.stderr)
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


def _named(image: str, error: str) -> str:
    """The failure of ``image`` naming the file once: readers' messages (Pillow's, the io
    module's) often name it already."""
    return error if image in error else f"{image}: {error}"


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="PSNR/SSIM on a folder of HR images (LR made by bicubic)")
    ev.add_argument("--hr", required=True, help="folder of HR images")
    add_model_args(ev)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.add_argument("--no-ssim", action="store_true", help="skip SSIM (faster)")
    ev.set_defaults(func=cmd_eval)
