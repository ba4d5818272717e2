"""The GPU session's ``profile`` step (issue 28, item 8): where a forward's time goes, per kernel,
beside what the roofline models for it, for both dense-conv kernels; and what TF32 costs in
PSNR on Set5.

1. Per-kernel times of one forward: fused Triton float16, channels_last, 540x960, with the
   dense conv as v1 and as v2 (``ESR_TRITON_CONV``): ``torch.profiler`` with CUDA activities
   around one forward after two warm-ups; every kernel launch grouped by kernel name (count,
   total µs), and per esr:: op the measured sum beside the roofline's modelled time for this
   GPU (``esr_kernels.roofline``, traced on CPU in a background process under Triton's
   interpreter, issue model from the sm_90 SASS when the GPU is sm_90).
2. TF32 on Set5: every model's fused Triton float32 output with TF32 on (PyTorch's default) and
   off (IEEE float32), eager likewise: max |difference| from the IEEE reference and the Set5 PSNR
   change (dB), the images from ``$ESR_SHARED_DIR/data/Set5`` (skipped, with the reason, when
   absent).

The dry run (CPU, no GPU) runs the same code on the native CPU backend at 24x32 with CPU
activities, so that CI keeps it working.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROFILE_HW = (540, 960)
DRY_HW = (24, 32)


def kernel_times(prof, device: str) -> dict:
    """{kernel name: {"count": n, "us": total µs}} of the profiler's device kernels (CPU ops in
    the dry run), largest first."""
    rows = {}
    for e in prof.key_averages():
        us = e.self_device_time_total if device == "cuda" else e.self_cpu_time_total
        if us <= 0 or (device == "cuda" and getattr(e, "device_type", None) is not None
                       and str(e.device_type).endswith("CPU")):
            continue
        rows[e.key] = {"count": e.count, "us": round(float(us), 1)}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]["us"]))


def profile_forward(name: str, conv: str, device: str, hw) -> dict:
    """One forward of fused ``name`` (float16 Triton on CUDA, the CPU backend in the dry run)
    under torch.profiler, with the dense conv ``conv``."""
    saved = os.environ.get("ESR_TRITON_CONV")
    os.environ["ESR_TRITON_CONV"] = conv
    try:
        return _profile_forward(name, conv, device, hw)
    finally:
        if saved is None:
            os.environ.pop("ESR_TRITON_CONV", None)
        else:
            os.environ["ESR_TRITON_CONV"] = saved


def _profile_forward(name: str, conv: str, device: str, hw) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    import esr_models
    from esr_models.cli.selftest import sample_image

    dtype = torch.float16 if device == "cuda" else torch.float32
    backend = "triton" if device == "cuda" else "cpu"
    with torch.inference_mode():
        model = esr_models.load(name, device=device, dtype=dtype, fused=True, backend=backend)
        esr_models.set_cuda_graphs(model, False)  # every launch visible to the profiler
        x = sample_image(*hw, device)[0].to(dtype).contiguous(memory_format=torch.channels_last)
        for _ in range(2):
            model(x)
        if device == "cuda":
            torch.cuda.synchronize()
        acts = [ProfilerActivity.CUDA] if device == "cuda" else [ProfilerActivity.CPU]
        with profile(activities=acts) as prof:
            model(x)
            if device == "cuda":
                torch.cuda.synchronize()
    kernels = kernel_times(prof, device)
    return {"model": name, "conv": conv, "dtype": str(dtype).split(".")[-1], "hw": list(hw),
            "launches": sum(k["count"] for k in kernels.values()),
            "total_us": round(sum(k["us"] for k in kernels.values()), 1), "kernels": kernels}


def by_op(kernels: dict) -> dict:
    """Measured µs per esr:: op from per-kernel-name times (``roofline._KERNEL_OF``'s Triton
    kernels; everything else, e.g. ATen's, under "other")."""
    from esr_kernels.roofline import _KERNEL_OF

    owner = {k: op for op, ks in _KERNEL_OF.items() for k in ((ks,) if isinstance(ks, str) else ks)}
    out: dict = {}
    for kname, v in kernels.items():
        op = next((o for k, o in owner.items() if k in kname), "other")
        out[op] = round(out.get(op, 0.0) + v["us"], 1)
    return out


def modelled_by_op_main(argv) -> int:
    """Background process: ``MODELS HxW CONV`` -> JSON {model: {esr op: modelled µs}} on the
    H200's measured ceilings (the roofline's device table), float16, traced under the interpreter."""
    from esr_kernels.roofline import DEVICES, Launch, launch_seconds
    from esr_models.cli.roofline import report_for

    os.environ["ESR_TRITON_CONV"] = argv[2]
    h, w = (int(v) for v in argv[1].split("x"))
    device = DEVICES["H200 (measured)"]
    out = {}
    for name in argv[0].split(","):
        rep = report_for(name, (h, w), "float16", sass=True)
        ops: dict = {}
        for d in rep["fused_launches"]:
            launch = Launch(**d)
            key = launch.name if launch.name.startswith("esr::") else "other"
            key = "esr::esa" if key.startswith("esr::esa") else key
            ops[key] = ops.get(key, 0.0) + 1e6 * launch_seconds(launch, device, "float16")
        out[name] = {k: round(v, 1) for k, v in ops.items()}
    print(json.dumps(out))
    return 0


def start_modelled(models, hw, conv) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_session_profile", "modelled", ",".join(models),
                             f"{hw[0]}x{hw[1]}", conv], cwd=ROOT, env=dict(os.environ, TRITON_INTERPRET="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tf32_on_set5(models, device: str) -> dict:
    """Max |difference| from the IEEE float32 reference and Set5 PSNR change (dB) of the fused
    Triton and eager float32 models with TF32 on, and of the fused model with it off."""
    import torch

    import esr_models
    from esr_models.evaluation.protocol import evaluate_folder

    shared = os.environ.get("ESR_SHARED_DIR")
    folder = Path(shared) / "data" / "Set5" if shared else None
    if folder is None or not folder.is_dir():
        return {"skipped": f"no Set5 folder ({folder or 'ESR_SHARED_DIR unset'})"}
    flags = torch.backends.cudnn.flags
    on = torch.backends.cudnn.enabled
    rows = {}
    for name in models:
        ref = esr_models.load(name, device=device)
        fused = esr_models.load(name, device=device, fused=True, backend="triton" if device == "cuda" else "cpu")
        runs = {}
        for label, model, tf32 in (("eager_ieee", ref, False), ("eager_tf32", ref, True),
                                   ("fused_ieee", fused, False), ("fused_tf32", fused, True)):
            with flags(enabled=on, allow_tf32=tf32):
                runs[label] = evaluate_folder(folder, lambda lr, m=model: m(lr.to(device)), with_ssim=False)["psnr"]
        rows[name] = {k: round(v - runs["eager_ieee"], 4) for k, v in runs.items() if k != "eager_ieee"} | \
            {"eager_ieee_psnr": round(runs["eager_ieee"], 4)}
    return {"psnr_change_db": rows, "note": "Set5 PSNR (RGB, border 4) minus the eager IEEE float32 model's"}


def step_profile(ctx) -> None:
    device = ctx.device
    hw = DRY_HW if ctx.dry_run else PROFILE_HW
    models = ctx.model_names
    convs = ("v1",) if ctx.dry_run else ("v1", "v2")
    modelled = {c: start_modelled(models, hw, c) for c in convs} if not ctx.dry_run else {}
    rows = []
    ctx.save(protocol=f"one forward after two warm-ups, torch.profiler ({'CUDA' if device == 'cuda' else 'CPU'} "
                      "activities), CUDA graphs off; kernels grouped by name", rows=rows)
    for name in models:
        for conv in convs:
            if ctx.left() < 20:
                rows.append({"model": name, "conv": conv, "error": "skipped: under 20 s left"})
                continue
            try:
                row = profile_forward(name, conv, device, hw)
                row["measured_us_by_op"] = by_op(row["kernels"])
            except Exception as exc:  # noqa: BLE001  one failure is a finding, not the end
                row = {"model": name, "conv": conv, "error": f"{type(exc).__name__}: {exc}"[:400]}
            rows.append(row)
            ctx.save(rows=rows)
    for conv, proc in modelled.items():
        try:
            out, err = proc.communicate(timeout=max(ctx.left() - 30, 1))
            model_ops = json.loads(out) if proc.returncode == 0 else {}
        except (subprocess.TimeoutExpired, ValueError):
            proc.kill()
            model_ops = {}
        for r in rows:
            if r.get("conv") == conv and r.get("model") in model_ops:
                r["modelled_us_by_op"] = model_ops[r["model"]]
    ctx.save(rows=rows)
    if ctx.left() > 25:
        try:
            ctx.save(tf32=tf32_on_set5(models, device))
        except Exception as exc:  # noqa: BLE001
            ctx.save(tf32={"error": f"{type(exc).__name__}: {exc}"[:400]})


if __name__ == "__main__":
    if sys.argv[1:2] == ["modelled"]:
        sys.exit(modelled_by_op_main(sys.argv[2:]))
    sys.exit(2)
