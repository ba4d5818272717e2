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
6. ``profile``: per-kernel times of one forward (torch.profiler, CUDA activities) beside the
   roofline's modelled time per op, with the dense conv as v1 and v2; the TF32 PSNR change on
   Set5 (``benchmarks/gpu_session_profile.py``).
7. ``sweep``: while time is left, per Triton kernel, pixels per program x warps
   (``esr_kernels.triton.configs.override``), each checked against the table's output first.

The dry run (``--dry-run``) runs the same steps on CPU with tiny sizes and the fused CPU
backend, Triton's interpreter for the sweep, and no install (it records what it would run), so
that CI keeps this script working.

Exit status: 0 when every chosen step ran (a step that ran and found nothing to do here, such
as the install in a dry run or the GPU tests without a GPU, is listed as skipped with its
reason and counts as run); 1 when a step failed, timed out, or was not run because the budget
was spent (the summary's first line names them); 2 a usage error found before any step: an
``--out`` that is not a folder, or one holding ``gpu-session.json`` or ``gpu-session.log``
without ``--overwrite`` (the report files follow ``esr_models.io.outputs``'s rule: written
atomically, never through a symlink, an existing file replaced only with ``--overwrite``).
The step files live in a temporary folder (``esr-gpu-session-*``), removed when the session
ends, also on failure, unless ``--keep-work``.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
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
STEPS = ("install", "warm", "env", "selftest", "pytest", "timing", "profile", "sweep")
# Steps in one group run side by side: the build and the Triton pre-compile use the CPUs while
# env measures the GPU. Each step's time box in seconds (the dry run finishes far inside them).
GROUPS = (("install", "warm", "env"), ("selftest",), ("pytest",), ("timing",), ("profile",), ("sweep",))
BOXES = {"install": 200, "warm": 150, "env": 60, "selftest": 150, "pytest": 120, "timing": 180, "profile": 90,
         "sweep": 120}


NOT_RUN = "not run"  # a step the budget left no time for: the session is incomplete (exit 1)


# ---------------------------------------------------------------- the parent: run the steps
class ReportFiles:
    """``--out``'s two files, checked before any step (``esr_models.io.outputs``'s rule for
    every report writer): the report, rewritten atomically as each step ends (the first write
    replaces an earlier file only with ``--overwrite``; later ones replace this session's own),
    and the log, appended to by each step."""

    def __init__(self, out: str, overwrite: bool):
        from esr_kernels.errors import InvalidValueError
        from esr_models.io.outputs import check_report_path

        self.out, self.overwrite, self._written = Path(out), overwrite, False
        if os.path.lexists(self.out) and not self.out.is_dir():  # never replaced, even with --overwrite
            raise InvalidValueError(f"--out {out}: not a folder (--out is the folder that gets gpu-session.json "
                                    "and gpu-session.log)")
        self.report = check_report_path(self.out / "gpu-session.json", overwrite, "--out")
        self.log_path = check_report_path(self.out / "gpu-session.log", overwrite, "--out")

    def open_log(self):
        """The session log, new: an earlier one (accepted with --overwrite) is removed first and
        the file is created exclusively, so a link there is never written through."""
        self.out.mkdir(parents=True, exist_ok=True)
        if self.overwrite and os.path.lexists(self.log_path):
            self.log_path.unlink()
        return open(self.log_path, "x", encoding="utf-8")

    def write(self, data: dict) -> None:
        from esr_models.io.outputs import write_report

        write_report(self.report, json.dumps(data, indent=1, default=str) + "\n", self.overwrite or self._written)
        self._written = True


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
    if box < 5:  # not a skip the step chose: the session did not do what was asked
        return entry | {"status": NOT_RUN, "why": f"no time left in the budget ({box:.0f} s left, 5 s needed)"}
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
    """Check --out, run the steps group by group, write the report as each ends, print the
    summary; the exit status is ``exit_status``'s. The temporary work folder is removed on
    every way out unless --keep-work (or --work named one)."""
    deadline = time.monotonic() + args.budget_s
    files = ReportFiles(args.out, args.overwrite)  # before anything is made or run
    # Step files live outside --out: only the report and the log come back from a lent machine.
    made = not args.work
    work = Path(tempfile.mkdtemp(prefix="esr-gpu-session-")) if made else Path(args.work)
    try:
        work.mkdir(parents=True, exist_ok=True)
        report = _run_steps(args, work, deadline, files)
    finally:
        if made and not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)
        elif made:
            print(f"gpu_session: step files kept in {work}", file=sys.stderr)
    print(summary_table(report))
    code, verdict = exit_status(report)
    if code:
        print(verdict, file=sys.stderr)
    return code


def _run_steps(args, work: Path, deadline: float, files: ReportFiles) -> dict:
    """The steps of ``args.steps`` in ``work``, group by group; the report."""
    (work / "args.json").write_text(json.dumps({"wheels": args.wheels, "dry_run": args.dry_run,
                                                "models": args.models, "pytest_k": args.pytest_k,
                                                "timing_filter": args.timing_filter}))
    wheels = _install_wheels(args, work)
    report = {"command": shlex.join([sys.executable, "-m", "benchmarks.gpu_session", *sys.argv[1:]]),
              "dry_run": args.dry_run, "budget_s": args.budget_s, "started_utc": _utc(), "wheels": wheels,
              "steps": []}
    with files.open_log() as log:
        for group in GROUPS:
            started = [_start_step(name, args, work, deadline) for name in group if name in args.steps]
            for entry in started:  # steps of one group run side by side (CPU work beside the GPU's)
                entry = _finish_step(entry, work, log)
                report["steps"].append(entry)
                report["elapsed_s"] = round(args.budget_s - (deadline - time.monotonic()), 1)
                files.write(report)
                print(f"gpu_session: {entry['step']}: {entry['status']} ({entry.get('seconds', 0)} s)", flush=True)
    report["finished_utc"] = _utc()
    report["exit_status"], report["verdict"] = exit_status(report)
    files.write(report)
    return report


def exit_status(report: dict) -> tuple[int, str]:
    """(exit status, one line): 0 when every chosen step ran (its own skips included), else 1,
    naming the steps that failed, timed out or were not run."""
    groups: dict[str, list[str]] = {}
    for s in report["steps"]:
        if s["status"] not in ("ok", "skipped"):
            kind = ("not run (no time left in the budget)" if s["status"] == NOT_RUN else
                    "timed out" if s["status"] == "timeout" else "failed")
            groups.setdefault(kind, []).append(s["step"])
    if not groups:
        return 0, f"gpu_session: every step ran ({len(report['steps'])})"
    return 1, "gpu_session: INCOMPLETE: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items())


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
    lines = ["", "gpu_session summary" + (" (DRY RUN on CPU: nothing here is a GPU figure)" if report["dry_run"] else ""),
             "  " + exit_status(report)[1].removeprefix("gpu_session: ")]
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
    p.add_argument("--out", help="folder for gpu-session.json and gpu-session.log (made if missing; one that "
                                 "holds them only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace --out's gpu-session.json and gpu-session.log")
    p.add_argument("--keep-work", action="store_true",
                   help="keep the temporary folder of step files (removed by default), and say where")
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
    if unknown or not args.steps:  # no step chosen would be a session that checks nothing
        p.error(f"--steps: {'unknown ' + str(unknown) if unknown else 'none chosen'}; choose from {STEPS}")
    args.models = [m.strip() for m in args.models.split(",")] if args.models else None
    from esr_kernels.errors import EsrError

    try:
        return run_session(args)
    except EsrError as exc:  # the package's own errors (a bad --out): one line, like the esr command's
        print(f"gpu_session: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
