"""Timing and launch-configuration sweep steps of ``benchmarks/gpu_session.py``.

Timing follows the challenge's protocol: batch 1 (and batch 4 for frames/s), CUDA events around
each forward, warm-up excluded, the median reported (mean and min kept too). Each row carries
the roofline's modelled time for this device (``esr_kernels.roofline`` traffic and MACs, with
the copy bandwidth and matrix rates the env step measured): a lower bound, not a prediction of
launch overheads.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GPU_SIZES = {"div2k-val-like": (339, 510), "540x960": (540, 960)}  # LR (H, W); DIV2K valid LR ~ 510x339
DRY_SIZE = {"tiny": (24, 32)}


@dataclass(frozen=True)
class Case:
    model: str
    size: str
    hw: tuple
    provider: str            # "eager", "triton", "cuda", "cpu", "compile"
    dtype: str = "float32"
    batch: int = 1
    channels_last: bool = False
    graph: bool = False
    tf32: bool = True        # float32: PyTorch's TF32 flag for convolutions (its default), which eager,
                             # torch.compile and the fused Triton kernels follow (the CUDA C++ ones are IEEE)
    conv: str = "auto"       # triton: the dense-conv kernel (ESR_TRITON_CONV: v1, or v2 the tensor-core GEMM)
    mode: str = "default"    # compile: torch.compile's mode ("max-autotune": inductor's conv templates, autotuned)

    @property
    def name(self) -> str:
        ieee = self.provider in ("eager", "compile", "triton") and self.dtype == "float32" and not self.tf32
        parts = [self.provider, self.dtype] + (["ieee"] if ieee else []) + (["channels_last"] if self.channels_last else [])
        parts += (["cuda_graph"] if self.graph else []) + ([f"batch{self.batch}"] if self.batch > 1 else [])
        parts += [f"conv_{self.conv}"] if self.conv != "auto" else []
        return "/".join(parts + ([self.mode] if self.mode != "default" else []))


def plan_cases(models, dry_run: bool) -> list[Case]:
    """The timing cases in order of value (float32 protocol first, torch.compile last)."""
    if dry_run:
        (size, hw), = DRY_SIZE.items()
        cases = [Case(m, size, hw, p) for m in models for p in ("eager", "cpu")]
        return cases + [Case(m, size, hw, "cpu", batch=2) for m in models]
    cases = []
    for size, hw in GPU_SIZES.items():
        cases += [Case(m, size, hw, p) for m in models for p in ("eager", "triton", "cuda")]
        # TF32 off: IEEE float32 for eager and the Triton kernels (the CUDA C++ kernels' arithmetic)
        cases += [Case(m, size, hw, p, tf32=False) for m in models for p in ("eager", "triton")]
    big = ("540x960", GPU_SIZES["540x960"])
    for dt in ("float16", "bfloat16"):
        cases += [Case(m, *big, "eager", dt, channels_last=True) for m in models]
        cases += [Case(m, *big, p, dt) for m in models for p in ("triton", "cuda")]
    # issue 28's A/B: the dense conv as v1 (today's "auto") and v2 (the tensor-core implicit GEMM)
    # side by side, in v2's layout (channels_last), float16 and float32 (TF32)
    for dt in ("float16", "float32"):
        cases += [Case(m, *big, "triton", dt, channels_last=True, conv=v) for m in models for v in ("v1", "v2")]
    cases += [Case(m, *big, p, "float16", graph=True) for m in models for p in ("triton", "cuda")]
    cases += [Case(m, *big, "triton", "float16", channels_last=True, graph=True, conv="v2") for m in models]
    cases += [Case(m, *big, p, "float16", batch=4, graph=True) for m in models for p in ("triton", "cuda")]
    cases += [Case(m, *big, "eager", "float16", batch=4, channels_last=True) for m in models]
    cases += [Case(m, *big, "compile", "float32") for m in models]
    cases += [Case(m, *big, "compile", "float16", channels_last=True) for m in models]
    cases += [Case(m, *big, "compile", "float16", channels_last=True, mode="max-autotune") for m in models]
    return cases


def build_runner(case: Case, device: str):
    """A zero-argument forward for ``case`` (inference mode, a CUDA graph replay if asked)."""
    import torch

    import esr_models
    from esr_models.cli.selftest import sample_image

    dtype = getattr(torch, case.dtype)
    fused = case.provider in ("triton", "cuda", "cpu")
    with torch.inference_mode():
        model = esr_models.load(case.model, device=device, dtype=dtype, fused=fused,
                                backend=case.provider if fused else "auto")
    x = sample_image(*case.hw, device)[0].to(dtype).repeat(case.batch, 1, 1, 1)
    if case.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    if case.provider == "compile":
        model = torch.compile(model, mode=None if case.mode == "default" else case.mode)
    if not case.graph:
        def run():
            with torch.inference_mode():
                return model(x)
        return run
    with torch.inference_mode():
        for _ in range(2):  # allocations and Triton compiles happen outside the graph
            model(x)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
    return graph.replay


def _ceilings(work: Path) -> dict:
    env = work / "step-env.json"
    return json.loads(env.read_text()) if env.is_file() else {}


def modelled_ms(launches, ceil: dict, dtype: str) -> float | None:
    """Σ max(bytes / copy bandwidth, 2 MACs / matrix rate) over [bytes, macs] launches."""
    bw = ceil.get("copy_gb_s")
    peak = ceil.get("fp32_tflops" if dtype == "float32" else "bf16_tflops")
    if not bw or not peak:
        return None
    return 1e3 * sum(max(b / (bw * 1e9), 2 * m / (peak * 1e12)) for b, m in launches)


def start_roofline(models, shapes) -> subprocess.Popen:
    """The traffic model of ``models`` at each (H, W, dtype) in ``shapes``, traced on CPU under
    Triton's interpreter in a background process (nothing runs on the GPU)."""
    spec = ";".join(f"{h}x{w}:{dt}" for h, w, dt in shapes)
    return subprocess.Popen([sys.executable, "-m", "benchmarks.gpu_session_steps", ",".join(models), spec],
                            cwd=ROOT, env=dict(os.environ, TRITON_INTERPRET="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def roofline_main(argv) -> int:
    """``MODELS HxW:dtype;...`` -> JSON {"HxW:dtype": {model: {"fused": [[bytes, macs]], "eager": ...}}}."""
    import torch

    import esr_models
    from esr_kernels.roofline import record

    out = {}
    for spec in argv[1].split(";"):
        hw, dt = spec.split(":")
        h, w = (int(v) for v in hw.split("x"))
        dtype = getattr(torch, dt)
        out[spec] = {}
        for name in argv[0].split(","):
            rec = {}
            for kind, model in (("fused", esr_models.load(name, fused=True, backend="triton", dtype=dtype)),
                                ("eager", esr_models.load(name, dtype=dtype))):
                rec[kind] = [[l.bytes, l.macs] for l in record(model, (1, 3, h, w), dtype)]
            out[spec][name] = rec
    print(json.dumps(out))
    return 0


def _attach_roofline(rows, proc, ceil, timeout) -> str | None:
    try:
        stdout, stderr = proc.communicate(timeout=max(timeout, 1))
    except subprocess.TimeoutExpired:
        proc.kill()
        return "roofline trace did not finish in time"
    if proc.returncode != 0:
        return f"roofline trace failed: {stderr.strip()[-500:]}"
    traces = json.loads(stdout)
    for r in rows:
        key = f"{r['hw'][0]}x{r['hw'][1]}:{'float16' if r['dtype'] == 'bfloat16' else r['dtype']}"
        rec = traces.get(key, {}).get(r["model"])
        if rec and r["provider"] != "compile":
            launches = rec["eager" if r["provider"] == "eager" else "fused"]
            ms = modelled_ms(launches, ceil, r["dtype"])
            r["roofline_ms"] = ms * r["batch"] if ms is not None else None
            r["roofline_mb"] = sum(b for b, _ in launches) * r["batch"] / 1e6
    return None


def _selected(case: Case, filt: str | None) -> bool:
    return not filt or any(f and f in f"{case.model}/{case.size}/{case.name}" for f in filt.split(","))


def step_timing(ctx) -> None:
    import torch

    from esr_kernels.timing import time_ms

    device = ctx.device
    models = ctx.model_names
    cases = [c for c in plan_cases(models, ctx.dry_run) if _selected(c, ctx.timing_filter)]
    shapes = sorted({(*c.hw, "float16" if c.dtype == "bfloat16" else c.dtype) for c in cases})
    roof = start_roofline(models, shapes)
    warmup, iters = (1, 3) if ctx.dry_run else (5, 20)
    rows = []
    ctx.save(protocol=f"batch as given, median of {iters} forwards after {warmup} warm-up, "
                      + ("CUDA events around each forward" if device == "cuda" else "perf_counter (CPU dry run)"),
             tf32={"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32},
             rows=rows)
    for case in cases:
        need = (240 if case.mode == "max-autotune" else 90) if case.provider == "compile" else 8
        if ctx.left() < need + 15:
            rows.append(asdict(case) | {"name": case.name, "error": f"skipped: under {need} s left"})
            continue
        row = asdict(case) | {"name": case.name}
        t0 = time.monotonic()
        saved_tf32 = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = case.tf32
        saved_conv = os.environ.get("ESR_TRITON_CONV")
        os.environ["ESR_TRITON_CONV"] = case.conv  # read at each launch: the capture and every forward
        try:
            run = build_runner(case, device)
            times = time_ms(run, device, warmup, iters)
            row.update(ms=statistics.median(times), mean_ms=statistics.fmean(times), min_ms=min(times),
                       frames_per_s=1e3 * case.batch / statistics.median(times))
        except Exception as exc:  # noqa: BLE001  one failing provider is a finding, not the end
            row["error"] = f"{type(exc).__name__}: {exc}"[:400]
        finally:
            torch.backends.cudnn.allow_tf32 = saved_tf32
            if saved_conv is None:
                os.environ.pop("ESR_TRITON_CONV", None)
            else:
                os.environ["ESR_TRITON_CONV"] = saved_conv
        row["setup_and_run_s"] = round(time.monotonic() - t0, 1)
        rows.append(row)
        ctx.save(rows=rows)
        if device == "cuda":
            torch.cuda.empty_cache()
    why = _attach_roofline(rows, roof, _ceilings(ctx.work), min(ctx.left() - 2, 60))
    ctx.save(conv_ab=conv_ab(rows))
    ctx.save(rows=rows, roofline_error=why,
             roofline="esr_kernels.roofline traffic (Triton launches for triton and cuda) with the env step's "
                      "measured copy bandwidth and matrix rates: sum of max(bytes/BW, 2 MACs/peak)")
    if any("error" in r and not r["error"].startswith("skipped") for r in rows):
        raise SystemExit(1)


def conv_ab(rows) -> dict:
    """The v1 / v2 dense-conv A/B from the timing rows (same model, dtype, size, layout, no
    graph): per model and dtype v1 ms / v2 ms (> 1: v2 faster), and what "auto" should run
    (``esr_kernels.triton.configs.AUTO_CONV``): v2 only if it won every pair measured."""
    ms = {(r["model"], r["dtype"], r["conv"]): r["ms"] for r in rows
          if r.get("provider") == "triton" and r.get("conv") in ("v1", "v2") and not r.get("graph") and "ms" in r}
    ratios = {}
    for (model, dtype, conv), v in ms.items():
        if conv == "v1" and (model, dtype, "v2") in ms:
            ratios.setdefault(model, {})[dtype] = round(v / ms[(model, dtype, "v2")], 3)
    pairs = [r for d in ratios.values() for r in d.values()]
    return {"v1_over_v2": ratios, "pairs": len(pairs),
            "auto_should_be": ("v2" if pairs and min(pairs) > 1 else "v1") if pairs else None}


# ---------------------------------------------------------------- 6. sweep
SWEEP_USERS = {"conv": ("ifadnet", "pfdnlite", "rlfn"),
               "bsb": ("ifadnet",), "esa_out": ("ifadnet", "rlfn"), "esa_down": ("ifadnet", "rlfn"),
               "esa_low": ("ifadnet", "rlfn"), "la_reduce": ("pfdnlite",)}
CI_BLOCK = {"conv": 16, "bsb": 16, "esa_down": 16}


def sweep_candidates(kernel: str, dry_run: bool):
    from esr_kernels.triton.configs import LaunchConfig

    grid = ((16, 4),) if dry_run else [(p, w) for p in (16, 32, 64, 128) for w in (4, 8)]
    return [LaunchConfig(block_p=p, num_warps=w, num_stages=1, ci_block=CI_BLOCK.get(kernel)) for p, w in grid]


class _SweepModel:
    """One model for the sweep: fused Triton, its input, the table's output and time, and the
    correctness bar (float32: 1e-5; low precision: twice the reference's own error)."""

    def __init__(self, name, device, dtype, hw, iters):
        import torch

        import esr_models
        from esr_models.cli.selftest import sample_image

        self.device, self.iters = device, iters
        x = sample_image(*hw, device)[0]
        with torch.inference_mode():
            truth = esr_models.load(name, device=device)(x)
            self.model = esr_models.load(name, device=device, dtype=dtype, fused=True, backend="triton")
            self.x = x.to(dtype)
            ref_err = (esr_models.load(name, device=device, dtype=dtype)(self.x).float() - truth).abs().max().item()
        self.truth = truth
        self.tol = 1e-5 if dtype == torch.float32 else 2 * ref_err
        self.base_ms = self.run()[1]

    def run(self):
        import torch

        from esr_kernels.timing import time_ms

        with torch.inference_mode():
            t0 = time.perf_counter()
            out = self.model(self.x)  # also the compile of a new configuration
            first_ms = (time.perf_counter() - t0) * 1e3
            err = (out.float() - self.truth).abs().max().item()
            if self.iters == 0:  # the dry run (interpreter): one forward, correctness and plumbing only
                return err, first_ms
            ms = statistics.median(time_ms(lambda: self.model(self.x), self.device, 2, self.iters))
        return err, ms


def step_sweep(ctx) -> None:
    import torch

    from esr_kernels.triton.common import target_arch
    from esr_kernels.triton.configs import override

    dtype = torch.float32 if ctx.dry_run else torch.float16
    hw = (8, 12) if ctx.dry_run else GPU_SIZES["540x960"]  # interpreter: a few programs per launch
    # cheapest first: each candidate recompiles every specialisation of the kernel (conv has most)
    kernels = ("la_reduce",) if ctx.dry_run else ("la_reduce", "bsb", "esa_out", "esa_low", "esa_down", "conv")
    arch = 90 if ctx.dry_run else None  # the dry run forces sm_90's configurations in the interpreter
    models, results, best = {}, {}, {}
    ctx.save(dtype=str(dtype), size=list(hw), interpreter=ctx.dry_run, kernels=results, best=best)
    with target_arch(arch) if arch else contextlib.nullcontext():
        for kernel in kernels:
            users = [m for m in SWEEP_USERS[kernel] if m in ctx.model_names]
            for m in users:
                if m not in models and ctx.left() > 20:
                    models[m] = _SweepModel(m, ctx.device, dtype, hw, 0 if ctx.dry_run else 10)
            users = [m for m in users if m in models]
            if not users:
                continue
            base = sum(models[m].base_ms for m in users)
            rows = results.setdefault(kernel, {"models": users, "table_ms": base, "candidates": []})["candidates"]
            for cfg in sweep_candidates(kernel, ctx.dry_run):
                if ctx.left() < 10:
                    break
                row = {"config": f"BLOCK_P={cfg.block_p} warps={cfg.num_warps}"}
                try:
                    with override(kernel, cfg):
                        got = [models[m].run() for m in users]
                    row.update(ms=sum(ms for _, ms in got), passed=all(e <= models[m].tol for (e, _), m in zip(got, users)),
                               max_err=max(e for e, _ in got))
                    row["speedup"] = base / row["ms"]
                except Exception as exc:  # noqa: BLE001  a config that does not compile or launch
                    row.update(passed=False, error=f"{type(exc).__name__}: {exc}"[:300])
                rows.append(row)
                ok = [r for r in rows if r.get("passed")]
                if ok:
                    best[kernel] = max(ok, key=lambda r: r["speedup"])
                ctx.save(kernels=results, best=best)
