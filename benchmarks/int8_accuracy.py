"""What int8 post-training quantisation costs these models in PSNR (issue 29, item 3).

    python -m benchmarks.int8_accuracy [--models ifadnet,pfdnlite,rlfn,span] [--calib 8]
        [--bounds 0.05,0.1] [--out benchmarks/results/int8-accuracy.json]

Calibrates on the first ``--calib`` images of BSD68 (not an evaluation set), then measures on
Set5 and Set14 (``$ESR_SHARED_DIR/data``, else ../shared/data beside the checkout) the RGB
PSNR change of the simulated int8 model (``esr_models.evaluation.int8``: per-channel int8
weights, per-tensor u8 inputs, ``reference.int8_conv``) from the float32 model:
every quantisable conv in int8, then the mixed precisions ``choose_layers`` picks for each
bound on the calibration images. Deterministic (no timing): the numbers depend on the
weights and images only.

``--openvino`` adds OpenVINO's int8 for comparison (needs ``pip install nncf``): the model's
ONNX export quantised by NNCF's post-training quantisation on the same calibration images,
with its defaults, and with only the convolutions quantised (NNCF's ``IgnoredScope`` over the
other op types: what our simulation quantises), run by OpenVINO's CPU plugin in float32
otherwise (``INFERENCE_PRECISION_HINT=f32``).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch


def _data_dir() -> Path:
    env = os.environ.get("ESR_SHARED_DIR")
    return (Path(env) if env else Path(__file__).resolve().parents[2] / "shared") / "data"


def _hr_images(folder: Path, limit: int | None = None) -> list[torch.Tensor]:
    from esr_models.evaluation.protocol import list_images
    from esr_models.io.images import read_rgb_uint8

    files, _ = list_images(folder)
    return [read_rgb_uint8(p) for p in files[:limit]]


def measure(name: str, calib: int, bounds: list[float], data: Path) -> dict:
    import esr_models
    from esr_models.evaluation import int8 as Q

    model = esr_models.load(name).eval()
    scale = 4
    cal_pairs = Q.hr_pairs(_hr_images(data / "BSD68", calib), scale)
    cal = Q.calibrate(model, (lr for lr, _ in cal_pairs))
    evals = {ds: Q.hr_pairs(_hr_images(data / ds), scale) for ds in ("Set5", "Set14")}
    float_psnr = {ds: Q.mean_psnr(model, p, scale) for ds, p in evals.items()}
    every = list(Q.quantisable_convs(model))
    rows = [{"int8_layers": "all", "n_int8": len(every), "int8_mac_fraction": 1.0,
             **{f"{ds}_change_db": -Q.psnr_loss(model, cal, p, scale, every, float_psnr[ds]) for ds, p in evals.items()}}]
    solo = None
    for bound in bounds:
        mixed = Q.choose_layers(model, cal, cal_pairs, scale, bound)
        solo = mixed.solo_loss_db
        rows.append({"bound_db": bound, "calibration_loss_db": mixed.loss_db, "n_int8": len(mixed.int8_layers),
                     "int8_mac_fraction": mixed.int8_mac_fraction, "float_layers": [n for n in every if n not in mixed.int8_layers],
                     **{f"{ds}_change_db": -Q.psnr_loss(model, cal, p, scale, mixed.int8_layers, float_psnr[ds])
                        for ds, p in evals.items()}})
    return {"model": name, "quantisable_convs": len(every), "float_psnr": float_psnr, "rows": rows,
            "solo_loss_db_on_calibration": solo}


# Op types NNCF would quantise besides the dense convolutions (its defaults quantise the inputs
# of element-wise ops too).
_NOT_CONVS = ["Multiply", "Add", "Subtract", "Divide", "Interpolate", "MaxPool", "Concat", "DepthToSpace",
              "GroupConvolution"]


def openvino_int8(name: str, calib: int, data: Path) -> dict:
    """Set5 / Set14 RGB PSNR change of OpenVINO int8 (NNCF PTQ) from OpenVINO float32, with
    NNCF's defaults and with the convolutions only."""
    import tempfile

    import nncf
    import openvino as ov

    import esr_models
    from esr_models.evaluation import int8 as Q
    from esr_models.evaluation.metrics import psnr
    from esr_models.interop.onnx import export_onnx
    from esr_models.io.images import to_uint8

    path = Path(tempfile.mkdtemp(prefix="esr-int8-")) / f"{name}.onnx"
    export_onnx(esr_models.load(name).eval(), path, verify=False)
    core = ov.Core()
    float_model = core.read_model(str(path))
    cal = nncf.Dataset([lr.numpy() for lr, _ in Q.hr_pairs(_hr_images(data / "BSD68", calib), 4)])
    variants = {
        "float32": float_model,
        "nncf_default": nncf.quantize(float_model, cal, subset_size=calib),
        "nncf_convs_only": nncf.quantize(float_model, cal, subset_size=calib, preset=nncf.QuantizationPreset.MIXED,
                                         ignored_scope=nncf.IgnoredScope(types=_NOT_CONVS, validate=False)),
    }
    sets = {ds: Q.hr_pairs(_hr_images(data / ds), 4) for ds in ("Set5", "Set14")}
    scores = {}
    for tag, m in variants.items():
        compiled = core.compile_model(m, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                                 "INFERENCE_NUM_THREADS": torch.get_num_threads()})
        request, port = compiled.create_infer_request(), compiled.output(0)
        for ds, pairs in sets.items():
            outs = [torch.from_numpy(request.infer({0: lr.numpy()})[port].copy()) for lr, _ in pairs]
            scores[tag, ds] = sum(psnr(to_uint8(o[0].float()), hr, border=4) for o, (_, hr) in zip(outs, pairs)) / len(pairs)
    return {tag: {f"{ds}_change_db": scores[tag, ds] - scores["float32", ds] for ds in sets}
            for tag in variants if tag != "float32"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="ifadnet,pfdnlite,rlfn,span")
    ap.add_argument("--calib", type=int, default=8, help="BSD68 images to calibrate on")
    ap.add_argument("--bounds", default="0.05,0.1", help="PSNR-loss bounds (dB) for the mixed precision")
    ap.add_argument("--openvino", action="store_true", help="add OpenVINO int8 (NNCF) for comparison")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args(argv)
    torch.set_grad_enabled(False)
    data = _data_dir()
    bounds = [float(b) for b in args.bounds.split(",") if b]
    results = []
    for name in args.models.split(","):
        r = measure(name, args.calib, bounds, data)
        results.append(r)
        for row in r["rows"]:
            what = "all int8" if row.get("int8_layers") == "all" else f"bound {row['bound_db']} dB"
            print(f"{name:9s} {what:16s} int8 convs {row['n_int8']:3d}/{r['quantisable_convs']:<3d} "
                  f"MACs int8 {row['int8_mac_fraction']:.2f}  Set5 {row['Set5_change_db']:+.4f}  "
                  f"Set14 {row['Set14_change_db']:+.4f} dB", flush=True)
        if args.openvino:
            r["openvino"] = openvino_int8(name, args.calib, data)
            for tag, row in r["openvino"].items():
                print(f"{name:9s} OpenVINO {tag:16s} Set5 {row['Set5_change_db']:+.4f}  Set14 {row['Set14_change_db']:+.4f} dB",
                      flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"calibration": f"BSD68, first {args.calib} images",
                                              "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
