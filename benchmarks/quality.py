"""Set5 PSNR change of a provider from the float32 reference model, for the benchmarks.

The PSNR is the project's evaluation (``esr_models.evaluation.protocol.evaluate_folder``, the
code path behind ``esr eval``), so the convention is the one ../shared/expected_psnr.json
documents: HR modcropped to x4, MATLAB-bicubic LR rounded to uint8, SR clamped and rounded to
uint8, a 4-pixel border cropped; ``psnr`` on RGB (the published numbers), ``psnr_y`` on the
luma (BT.601) channel. The change is provider minus reference, mean over the images, in dB:
negative means a loss.

Set5 is found at $ESR_SHARED_DIR/data/Set5, else ../shared/data/Set5 beside the checkout
(benchmark data, never product code). ``ESR_BENCH_PSNR=0`` turns the check off.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch

Upscale = Callable[[torch.Tensor], torch.Tensor]
# Per process only (a run measures its own providers; nothing is kept across runs).
_REFERENCE: dict[str, dict] = {}
_CHANGES: dict[tuple[str, str], dict] = {}


def set5_dir() -> Path | None:
    env = os.environ.get("ESR_SHARED_DIR")
    shared = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    folder = shared / "data" / "Set5"
    return folder if folder.is_dir() else None


def psnr_enabled() -> bool:
    return os.environ.get("ESR_BENCH_PSNR", "1") != "0"


def evaluate(upscale: Upscale, folder: Path, min_size: int = 1) -> dict:
    """Mean PSNR and PSNR-Y (dB) of ``upscale`` over ``folder``, by the project's protocol."""
    from esr_models.evaluation.protocol import evaluate_folder

    res = evaluate_folder(folder, upscale, scale=4, with_ssim=False, min_size=min_size)
    if res["failed"]:
        raise RuntimeError(f"PSNR check failed on {res['failed']}")
    return {"psnr": res["psnr"], "psnr_y": res["psnr_y"], "images": res["images"]}


def psnr_change(upscale: Upscale, reference: dict, folder: Path, min_size: int = 1) -> dict:
    """``upscale``'s PSNR and its change from ``reference`` (an ``evaluate`` result)."""
    got = evaluate(upscale, folder, min_size)
    return {"psnr_db": got["psnr"], "psnr_y_db": got["psnr_y"],
            "psnr_change_db": got["psnr"] - reference["psnr"],
            "psnr_y_change_db": got["psnr_y"] - reference["psnr_y"],
            "reference_psnr_db": reference["psnr"], "images": got["images"]}


def reference_psnr(model_name: str, folder: Path) -> dict:
    """The float32 eager reference model's Set5 scores (once per process and model)."""
    if model_name not in _REFERENCE:
        import esr_models
        from esr_models.infer.loading import min_input_size

        model = esr_models.load(model_name)
        _REFERENCE[model_name] = {**evaluate(model, folder, min_input_size(model)),
                                  "min_size": min_input_size(model)}
    return _REFERENCE[model_name]


def provider_psnr_change(provider_name: str, model_name: str, upscale: Upscale) -> dict:
    """The provider's Set5 PSNR change for ``model_name``, computed once per process (the
    benchmark of the next size reuses it), or ``{"skipped": why}``."""
    if not psnr_enabled():
        return {"skipped": "ESR_BENCH_PSNR=0"}
    folder = set5_dir()
    if folder is None:
        return {"skipped": "Set5 not found (set ESR_SHARED_DIR to the folder holding data/Set5)"}
    key = (provider_name, model_name)
    if key not in _CHANGES:
        ref = reference_psnr(model_name, folder)
        _CHANGES[key] = psnr_change(upscale, ref, folder, ref["min_size"])
    return _CHANGES[key]
