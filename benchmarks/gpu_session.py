"""One prepared command for a lent GPU: install, prove and time the GPU path, in order of value.

    python -m benchmarks.gpu_session --out DIR [--budget-s 500] [--wheels .whl]
    python -m benchmarks.gpu_session --out DIR --dry-run        # on CPU, tiny sizes (CI)

Made for the machine this project borrows (one H200, its own image: Python 3.12, torch 2.11,
Triton 3.6, nvcc 13, no network) but it runs on any CUDA machine. With nothing but the working
tree, the upstream weights (``$ESR_WEIGHTS_DIR``) and a folder of wheels (see
``benchmarks/gpu_session_prepare.sh``), it runs these steps, each in its own subprocess with
its own time box, and rewrites ``DIR/gpu-session.json`` as each one ends (a timeout loses
nothing that finished; a timed-out step keeps the rows it had written):

1. ``install``: the carried wheels (``pip --no-index --no-deps --target``), then
   ``pip install --no-build-isolation --no-deps -e .`` with ``TORCH_CUDA_ARCH_LIST`` of this
   GPU only and all cores (``ESR_SKIP_CPU_BUILD=1``: the CUDA extension carries the schemas).
2. ``env``: GPU, driver, clocks, versions; ceilings measured in seconds: device-to-device copy
   bandwidth and dense bf16 / fp32 matrix-product rates.
3. ``selftest``: ``esr selftest --device cuda --no-timings`` (triton and cuda backends, every
   model and dtype, ops, CUDA graphs) at 540x960.
4. ``pytest``: ``tests/kernels/test_gpu.py``.
5. ``timing``: the challenge's protocol (batch 1, CUDA events around the forward, warm-up
   excluded, median): float32 eager / fused Triton / fused CUDA at a DIV2K-validation-like LR
   size (339x510) and 540x960, then float16/bfloat16, a CUDA graph, batch 4 frames/s, and
   torch.compile last (its compile time is the costliest); each beside the roofline's modelled
   time for this GPU's measured ceilings (``esr_kernels.roofline``).
6. ``sweep``: while time is left, per Triton kernel, pixels per program x warps
   (``esr_kernels.triton.configs.override``), each checked against the table's output first.

The dry run (``--dry-run``) runs the same steps on CPU with tiny sizes and the fused CPU
backend, Triton's interpreter for the sweep, and no install (it records what it would run), so
that CI keeps this script working. Exit status: 0 when every step ran (skips included), 1 when
one failed or timed out.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the lent image lacks of the package's pure-Python dependencies (it has numpy, pillow,
# tqdm, pytest, ninja, setuptools): carried as wheels for its Python.
DEVICE_WHEELS = ("pypng==0.20220715.0",)
DEVICE_PYTHON = "3.12"
STEPS = ("install", "warm", "env", "selftest", "pytest", "timing", "sweep")
# Steps in one group run side by side: the build and the Triton pre-compile use the CPUs while
# env measures the GPU. Each step's time box in seconds (the dry run finishes far inside them).
GROUPS = (("install", "warm", "env"), ("selftest",), ("pytest",), ("timing",), ("sweep",))
BOXES = {"install": 200, "warm": 150, "env": 60, "selftest": 150, "pytest": 120, "timing": 180, "sweep": 120}


# ---------------------------------------------------------------- the parent: run the steps
def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(path)


def _child_env(args, work: Path) -> dict:
    # One Triton cache for every step: the warm step's parallel compiles are the JIT's later hits.
    env = dict(os.environ, PYTHONUNBUFFERED="1", TRITON_CACHE_DIR=str(work / "gpu-check" / "triton"))
    site = work / "site"
    if site.is_dir():  # the carried wheels, installed by the install step
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    env.pop("TRITON_INTERPRET", None)  # set only for the dry run's sweep (below)
    return env


def _start_step(name: str, args, work: Path, deadline: float) -> dict:
    """Start one step's subprocess with box = min(its box, the time left); output to
    work/log-NAME.txt."""
    box = min(BOXES[name], max(deadline - time.monotonic(), 0))
    entry = {"step": name, "box_s": round(box, 1)}
    if box < 5:
        return entry | {"status": "skipped", "why": "no time left in the budget"}
    cmd = [sys.executable, "-m", "benchmarks.gpu_session", "--step", name, "--work", str(work),
           "--deadline-s", str(round(box, 1))] + (["--dry-run"] if args.dry_run else [])
    env = _child_env(args, work)
    if name == "sweep" and args.dry_run:
        env["TRITON_INTERPRET"] = "1"  # the sweep's kernels run in Triton's interpreter on CPU
    log = open(work / f"log-{name}.txt", "w", encoding="utf-8")
    log.write(f"===== {name} (box {box:.0f} s): {shlex.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return entry | {"_proc": proc, "_log": log, "_t0": time.monotonic()}


def _finish_step(entry: dict, work: Path, session_log) -> dict:
    """Wait for a started step within its box (killed after it); read what it wrote to
    work/step-NAME.json (partial if it timed out) and append its log to the session log."""
    proc = entry.pop("_proc", None)
    if proc is None:
        return entry
    log, t0 = entry.pop("_log"), entry.pop("_t0")
    try:
        proc.wait(timeout=max(entry["box_s"] - (time.monotonic() - t0), 0.1))
        entry["status"] = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        entry["status"] = "timeout"
    log.close()
    entry["seconds"] = round(time.monotonic() - t0, 1)
    session_log.write((work / f"log-{entry['step']}.txt").read_text(encoding="utf-8", errors="replace"))
    session_log.flush()
    out = work / f"step-{entry['step']}.json"
    if out.is_file():
        try:
            entry["result"] = json.loads(out.read_text())
        except json.JSONDecodeError as exc:
            entry["result_error"] = f"{out.name} unreadable: {exc}"
    skipped = (entry.get("result") or {}).get("skipped")
    if skipped and entry["status"] == "ok":
        entry["status"], entry["why"] = "skipped", skipped
    return entry


def _install_wheels(args, work: Path) -> dict:
    """The carried wheels (``--wheels``) into work/site before any step: no network."""
    from benchmarks.gpu_session_steps import wheel_command

    wheels = sorted(Path(args.wheels).glob("*.whl")) if args.wheels else []
    if not wheels:
        return {"installed": [], "note": "no --wheels folder given" if not args.wheels else f"no wheels in {args.wheels}"}
    cmd = wheel_command(work, wheels)
    if args.dry_run:
        return {"installed": [], "would_run": shlex.join(map(str, cmd))}
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return {"installed": [w.name for w in wheels] if proc.returncode == 0 else [], "exit": proc.returncode,
            "output": (proc.stdout + proc.stderr)[-1000:]}


def run_session(args) -> int:
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    report_path = out_dir / "gpu-session.json"
    if report_path.exists():
        raise SystemExit(f"gpu_session: {report_path} exists (nothing is overwritten: choose another --out)")
    # Step files live outside --out: only the report and the log come back from a lent machine.
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="esr-gpu-session-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "args.json").write_text(json.dumps({"wheels": args.wheels, "dry_run": args.dry_run,
                                                "models": args.models, "pytest_k": args.pytest_k,
                                                "timing_filter": args.timing_filter}))
    deadline = time.monotonic() + args.budget_s
    wheels = _install_wheels(args, work)
    report = {"command": shlex.join([sys.executable, "-m", "benchmarks.gpu_session", *sys.argv[1:]]),
              "dry_run": args.dry_run, "budget_s": args.budget_s, "started_utc": _utc(), "wheels": wheels,
              "steps": []}
    with open(out_dir / "gpu-session.log", "a", encoding="utf-8") as log:
        for group in GROUPS:
            started = [_start_step(name, args, work, deadline) for name in group if name in args.steps]
            for entry in started:  # steps of one group run side by side (CPU work beside the GPU's)
                entry = _finish_step(entry, work, log)
                report["steps"].append(entry)
                report["elapsed_s"] = round(args.budget_s - (deadline - time.monotonic()), 1)
                _write_json(report_path, report)
                print(f"gpu_session: {entry['step']}: {entry['status']} ({entry.get('seconds', 0)} s)", flush=True)
    report["finished_utc"] = _utc()
    _write_json(report_path, report)
    print(summary_table(report))
    bad = [s for s in report["steps"] if s["status"] not in ("ok", "skipped")]
    return 1 if bad else 0


def _utc() -> str:
    import datetime as dt

    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- preparing (here, with the network)
def prepare(dest: Path, weights_dir: Path | None = None) -> dict:
    """Fill ``dest`` (``.gpu/`` by default, git-ignored) with what the lent machine lacks: the
    upstream weights under ``dest/shared/weights`` (the tests' ``shared`` layout, found there
    through ``ESR_SHARED_DIR``) and ``DEVICE_WHEELS`` built for its Python under
    ``dest/wheels``. Returns what it put there and the device command."""
    import shutil

    weights_dir = Path(weights_dir or os.environ.get("ESR_WEIGHTS_DIR") or ROOT.parent / "shared" / "weights")
    if not any(weights_dir.glob("*.pth")):
        raise SystemExit(f"gpu_session --prepare: no checkpoints in {weights_dir} (set ESR_WEIGHTS_DIR)")
    (dest / "shared" / "weights").mkdir(parents=True, exist_ok=True)
    for f in sorted(weights_dir.glob("*.pth")):
        shutil.copy2(f, dest / "shared" / "weights" / f.name)
    wheels = dest / "wheels"
    wheels.mkdir(exist_ok=True)
    platforms = [a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                 for a in ("--platform", p)]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", DEVICE_PYTHON, "--implementation", "cp", *platforms, "-d", str(wheels),
           *DEVICE_WHEELS]
    subprocess.run(cmd, check=True)
    return {"weights": sorted(p.name for p in (dest / "shared" / "weights").glob("*.pth")),
            "wheels": sorted(p.name for p in wheels.glob("*.whl")), "command": device_command(dest)}


def device_command(dest: Path, budget_s: int = 500) -> str:
    """The command the device runs (``carry``: the ``dest`` folder, relative to the checkout)."""
    rel = dest.resolve().relative_to(ROOT) if dest.resolve().is_relative_to(ROOT) else dest
    return (f"ESR_SHARED_DIR=$PWD/{rel}/shared ESR_WEIGHTS_DIR=$PWD/{rel}/shared/weights "
            f"python3 -m benchmarks.gpu_session --out $OUT --wheels {rel}/wheels --budget-s {budget_s}")


# ---------------------------------------------------------------- the short table printed last
def summary_table(report: dict) -> str:
    steps = {s["step"]: s for s in report["steps"]}
    lines = ["", "gpu_session summary" + (" (DRY RUN on CPU: nothing here is a GPU figure)" if report["dry_run"] else "")]
    for s in report["steps"]:
        lines.append(f"  {s['step']:<9} {s['status']:<22} {s.get('seconds', '-'):>6} s  {_step_note(s)}")
    timing = steps.get("timing", {}).get("result", {})
    if timing.get("rows"):
        lines.append("  timing (median ms; roofline-modelled ms for this device in brackets):")
        for r in timing["rows"]:
            model_ms = f" [{r['roofline_ms']:.3f}]" if r.get("roofline_ms") is not None else ""
            val = f"{r['ms']:.3f} ms" if r.get("ms") is not None else r.get("error", "-")[:60]
            fps = f"  {r['frames_per_s']:.1f} frames/s" if r.get("frames_per_s") else ""
            lines.append(f"    {r['model']:<9} {r['size']:<10} {r['name']:<30} {val}{model_ms}{fps}")
    return "\n".join(lines)


def _step_note(s: dict) -> str:
    r = s.get("result") or {}
    if s.get("why"):
        return s["why"]
    if s["step"] == "env" and "copy_gb_s" in r:
        return (f"{r.get('device', '')}: copy {r['copy_gb_s']:.0f} GB/s, bf16 {r.get('bf16_tflops', 0):.0f} "
                f"TFLOP/s, fp32 {r.get('fp32_tflops', 0):.1f} TFLOP/s")
    if s["step"] == "selftest":
        return f"verdict {r.get('verdict')}; failed: {', '.join(r.get('failed', [])) or 'none'}"[:300]
    if s["step"] == "pytest":
        return r.get("summary", "")
    if s["step"] == "sweep" and r.get("best"):
        return "; ".join(f"{k}: {v['config']} {v['speedup']:.2f}x" for k, v in r["best"].items())[:300]
    if s["step"] == "install":
        return r.get("note", "")
    return ""


# ---------------------------------------------------------------- the child: one step
def run_child(args) -> int:
    from benchmarks import gpu_session_steps as steps

    work = Path(args.work)
    saved = json.loads((work / "args.json").read_text()) if (work / "args.json").is_file() else {}
    ctx = steps.StepContext(work=work, dry_run=args.dry_run, deadline=time.monotonic() + args.deadline_s - 3,
                            wheels=saved.get("wheels"), models=saved.get("models"),
                            pytest_k=saved.get("pytest_k"), timing_filter=saved.get("timing_filter"),
                            out=work / f"step-{args.step}.json")
    getattr(steps, f"step_{args.step}")(ctx)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_session", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", help="folder for gpu-session.json and gpu-session.log (must not hold a report)")
    p.add_argument("--prepare", metavar="DIR", default=None,
                   help="here, with the network: put the weights and wheels the lent machine lacks in "
                        "DIR (e.g. .gpu), print the device command, and exit")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no install: checks the script")
    p.add_argument("--budget-s", type=float, default=500, help="total seconds for all steps (default 500)")
    p.add_argument("--wheels", default=None, help="folder of wheels to install first (no network)")
    p.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated subset of {','.join(STEPS)}")
    p.add_argument("--models", default=None, help="comma-separated models (default all three)")
    p.add_argument("--pytest-k", default=None, metavar="EXPR",
                   help="pytest step: one run of tests/kernels/test_gpu.py -k EXPR instead of the default two")
    p.add_argument("--timing-filter", default=None, metavar="S1,S2",
                   help="timing step: only cases whose model/size/provider name contains one of these")
    p.add_argument("--work", default=None, help=argparse.SUPPRESS)
    p.add_argument("--step", default=None, choices=STEPS, help=argparse.SUPPRESS)
    p.add_argument("--deadline-s", type=float, default=60, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.step:
        return run_child(args)
    if args.prepare:
        print(json.dumps(prepare(Path(args.prepare)), indent=1))
        return 0
    if not args.out:
        p.error("--out DIR is required")
    args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in args.steps if s not in STEPS]
    if unknown:
        p.error(f"--steps: unknown {unknown}; choose from {STEPS}")
    args.models = [m.strip() for m in args.models.split(",")] if args.models else None
    return run_session(args)


if __name__ == "__main__":
    sys.exit(main())
