"""The steps of ``benchmarks/gpu_session.py``, each run in its own subprocess.

Every step writes its result to ``ctx.out`` (JSON) as it goes (``ctx.save``), so a step killed
at its time box leaves what it had finished. A result with ``skipped`` says why the step did
nothing (e.g. no GPU tests collected on CPU); the parent reports it as skipped, never as passed.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ("ifadnet", "pfdnlite", "rlfn", "span")


@dataclass
class StepContext:
    work: Path
    dry_run: bool
    deadline: float          # time.monotonic() by which the step must have saved its result
    out: Path
    wheels: str | None = None
    models: list | None = None
    pytest_k: str | None = None
    timing_filter: str | None = None
    result: dict = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, **updates) -> None:
        self.result.update(updates)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.result, indent=1, default=str))
        tmp.replace(self.out)

    @property
    def model_names(self) -> list:
        return list(self.models or (("pfdnlite",) if self.dry_run else MODELS))

    @property
    def device(self) -> str:
        return "cpu" if self.dry_run else "cuda"


def _run(cmd, timeout, env=None, cwd=ROOT) -> tuple[int, str]:
    """Run ``cmd``, echoing its output to ours (the session log); (exit code, output tail)."""
    print("$ " + " ".join(map(str, cmd)), flush=True)
    try:
        proc = subprocess.run(list(map(str, cmd)), cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=max(timeout, 1))
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        text = ((exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or ""))
        code = -9
    print(text, flush=True)
    return code, text[-4000:]


# ---------------------------------------------------------------- 1. install
def wheel_command(work: Path, wheels: list[Path]) -> list:
    """The carried wheels into ``work/site`` (every step gets it on PYTHONPATH); no network."""
    return [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
            "--no-cache-dir", "--upgrade", "--target", str(work / "site"), *map(str, wheels)]


def install_commands(work: Path, wheels: list[Path], arch_list: str) -> list[tuple[list, dict]]:
    """(command, extra environment) of the install: this checkout, editable, without the
    network, the CUDA extension only (it defines the esr_native schemas itself), all cores."""
    cmds = []
    cmds.append(([sys.executable, "-m", "pip", "install", "--no-index", "--no-build-isolation", "--no-deps",
                  "-e", str(ROOT)],
                 {"TORCH_CUDA_ARCH_LIST": arch_list, "MAX_JOBS": str(os.cpu_count() or 4),
                  "ESR_SKIP_CPU_BUILD": "1"}))
    return cmds


def step_install(ctx: StepContext) -> None:
    import torch

    cap = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
    cmds = install_commands(ctx.work, [], f"{cap[0]}.{cap[1]}")
    ctx.save(commands=[" ".join(c) for c, _ in cmds], env=[e for _, e in cmds])
    if ctx.dry_run:
        ctx.save(skipped="dry run: the checkout's own install is used (commands recorded)")
        return
    runs = []
    for cmd, extra in cmds:
        t0 = time.monotonic()
        code, tail = _run(cmd, ctx.left(), env=dict(os.environ, **extra))
        runs.append({"command": " ".join(cmd[:8]), "env": extra, "exit": code,
                     "seconds": round(time.monotonic() - t0, 1), "tail": tail[-1500:]})
        ctx.save(runs=runs)
        if code != 0:
            ctx.save(note=f"install failed (exit {code}): later steps run from the source tree")
            raise SystemExit(1)
    code, tail = _run([sys.executable, "-c", "import esr_kernels._C_cuda as m; print(m.__file__)"], 60)
    ctx.save(cuda_extension_imports=code == 0, import_output=tail[-500:],
             note=f"built in {sum(r['seconds'] for r in runs):.0f} s; _C_cuda imports: {code == 0}")
    if code != 0:
        raise SystemExit(1)


# ---------------------------------------------------------------- 1b. warm (beside install)
# What the later steps launch: selftest and timing at 540x960, timing at 339x510, tests/kernels/test_gpu.py
# at 96x128 and 64x80. Compiled in parallel into the Triton cache every step shares.
WARM_SIZES = "540x960,339x510,96x128,64x80"


def _cache_entries(work: Path) -> int:
    cache = work / "gpu-check" / "triton"
    return sum(1 for _ in cache.iterdir()) if cache.is_dir() else 0


def step_warm(ctx: StepContext) -> None:
    """``esr gpu-check`` for this GPU's arch at the sizes the session runs, all cores: its
    compiles land in the shared Triton cache (the same specialisation and options as the JIT's
    launch), and its resource report is the device's own (registers, spills with this Triton)."""
    import torch

    report = ctx.work / "gpu-check-device.json"
    if ctx.dry_run:  # one kernel, one spec: the plumbing, compiled for sm_90 without a GPU
        arch, extra = 90, ["--kernels", "_la_reduce_kernel", "--dtypes", "float32", "--layouts", "nchw",
                           "--sizes", "24x32"]
    else:
        cap = torch.cuda.get_device_capability()
        arch, extra = cap[0] * 10 + cap[1], ["--sizes", WARM_SIZES, "--variants-everywhere"]
    cmd = [sys.executable, "-m", "esr_models.cli", "gpu-check", "--arch", str(arch), "--batch", "1",
           "--jobs", str(os.cpu_count() or 2), "--cache-dir", ctx.work / "gpu-check", "--json", report,
           "--overwrite",  # the session's own scratch report: a rerun in the same --work replaces it
           "--models", ",".join(ctx.model_names), *extra]
    env = dict(os.environ, TRITON_INTERPRET="1")  # recording runs the models under the interpreter
    code, tail = _run(cmd, ctx.left(), env=env)
    ctx.save(command=" ".join(map(str, cmd[1:])), exit=code, tail=tail[-2000:], cache_entries=_cache_entries(ctx.work))
    if report.is_file():
        data = json.loads(report.read_text())
        ctx.save(violations=data["violations"], timing_s=data["timing_s"],
                 summary={a: v["summary"] for a, v in data["archs"].items()},
                 failing=[{k: r.get(k) for k in ("kernel", "spec", "regs", "stack", "local", "violations", "used_by")}
                          for v in data["archs"].values() for r in v["specialisations"] if r["verdict"] != "ok"])
    if code != 0:
        raise SystemExit(1)


# ---------------------------------------------------------------- 2. env
def _events_ms(fn, iters: int, device: str) -> float:
    """Total ms of ``iters`` calls of fn, by CUDA events (perf_counter on CPU)."""
    import torch

    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - t0) * 1e3


def measure_ceilings(device: str, small: bool) -> dict:
    """Device-to-device copy bandwidth (bytes read + written) and dense matrix-product rates
    (bf16; fp32 with TF32 off), each after warm-ups: the ceilings timings are judged against."""
    import torch

    n_bytes = (64 << 20) if small else (2 << 30)
    a = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    ms = _events_ms(lambda: b.copy_(a), 10, device)
    out = {"copy_bytes": n_bytes, "copy_gb_s": 2 * n_bytes * 10 / (ms * 1e-3) / 1e9}
    del a, b
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for name, dtype, n, iters in (("bf16", torch.bfloat16, 512 if small else 8192, 10),
                                      ("fp32", torch.float32, 512 if small else 8192, 5)):
            x = torch.randn(n, n, device=device, dtype=dtype)
            y = torch.randn(n, n, device=device, dtype=dtype)
            for _ in range(3):
                x @ y
            ms = _events_ms(lambda: x @ y, iters, device)
            out[f"{name}_tflops"] = 2 * n ** 3 * iters / (ms * 1e-3) / 1e12
            out[f"{name}_matmul_n"] = n
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved
    return out


def _nvidia_smi() -> dict:
    fields = ("name,driver_version,clocks.sm,clocks.max.sm,clocks.mem,clocks.max.mem,power.limit,"
              "temperature.gpu,memory.total")
    try:
        text = subprocess.run(["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"error": str(exc)}
    return dict(zip(fields.split(","), (v.strip() for v in text.splitlines()[0].split(",")))) if text else {}


def versions() -> dict:
    import platform

    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    try:
        nvcc = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=20).stdout
        out["nvcc"] = (re.findall(r"release [\d.]+", nvcc) or [None])[0]
    except (OSError, subprocess.TimeoutExpired):
        out["nvcc"] = None
    return out


def step_env(ctx: StepContext) -> None:
    import torch

    ctx.save(versions=versions(), cpu_count=os.cpu_count())
    if ctx.device == "cuda":
        p = torch.cuda.get_device_properties(0)
        ctx.save(device=p.name, capability=f"sm_{p.major}{p.minor}", sms=p.multi_processor_count,
                 memory_gib=round(p.total_memory / 2**30, 1), l2_mb=getattr(p, "L2_cache_size", 0) / 2**20,
                 nvidia_smi_before=_nvidia_smi())
    else:
        from esr_models.cli.selftest import _device_name

        ctx.save(device=_device_name(torch.device("cpu")), torch_threads=torch.get_num_threads())
    ctx.save(**measure_ceilings(ctx.device, small=ctx.dry_run))
    if ctx.device == "cuda":
        ctx.save(nvidia_smi_after=_nvidia_smi())


# ---------------------------------------------------------------- 3. selftest
def step_selftest(ctx: StepContext) -> None:
    report = ctx.work / "selftest.json"
    if report.exists():
        report.unlink()
    cmd = [sys.executable, "-m", "esr_models.cli", "selftest", "--device", ctx.device, "--no-timings",
           "--json", report, "--models", ",".join(ctx.model_names)]
    if ctx.dry_run:
        cmd.append("--quick")
    before = _cache_entries(ctx.work)
    code, tail = _run(cmd, ctx.left())
    # Entries the JIT added although warm compiled the same launches: 0 means the warm-up's keys hit.
    ctx.save(command=" ".join(map(str, cmd[1:])), exit=code, tail=tail[-3000:],
             triton_cache_entries_added=_cache_entries(ctx.work) - before)
    if report.is_file():
        data = json.loads(report.read_text())
        keep = ("kind", "model", "backend", "dtype", "variant", "metric", "error", "tolerance", "passed",
                "detail", "seconds")
        ctx.save(verdict=data["verdict"], failed=data["failed"], seconds=data["seconds"],
                 device_name=data["device_name"], input=data["input"],
                 checks=[{k: c[k] for k in keep if k in c} for c in data["checks"]])
    if code != 0:
        raise SystemExit(1)


# ---------------------------------------------------------------- 4. pytest
def parse_junit(path: Path) -> dict:
    """Per-test outcomes and the counts from a JUnit XML file."""
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (node.get("message") or "")[:600]
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    return {"tests": tests, "counts": counts,
            "summary": ", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no tests"}


# tests/kernels/test_gpu.py in two runs: everything but torch.compile(max-autotune) first (its autotuning
# is the slowest part), then that test with the time left. test_selftest_cuda_quick_passes is
# left out: the selftest step has just run the full (not --quick) command.
PYTEST_RUNS = (("main", "not max_autotune and not selftest_cuda_quick"), ("max_autotune", "max_autotune"))
PYTEST_LEFT_OUT = {"tests/kernels/test_gpu.py::test_selftest_cuda_quick_passes":
                   "the selftest step ran the full command"}


def step_pytest(ctx: StepContext) -> None:
    tests, runs = [], []
    for name, expr in ((("chosen", ctx.pytest_k),) if ctx.pytest_k else PYTEST_RUNS):
        if ctx.left() < 20:
            runs.append({"run": name, "skipped": "no time left"})
            continue
        junit = ctx.work / f"junit-{name}.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "-rfE",
               "--durations=10", f"--junitxml={junit}", "-k", expr, "tests/kernels/test_gpu.py"]
        code, tail = _run(cmd, ctx.left() - 5)
        run = {"run": name, "command": " ".join(cmd[1:]), "exit": code, "tail": tail[-2500:]}
        if junit.is_file():
            parsed = parse_junit(junit)
            tests += parsed["tests"]
            run["summary"] = parsed["summary"]
        runs.append(run)
        ctx.save(runs=runs, tests=tests, left_out=PYTEST_LEFT_OUT)
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    ctx.save(counts=counts, summary=", ".join(f"{v} {k}" for k, v in counts.items() if v) or "no tests")
    if tests and counts["skipped"] == len(tests):
        reasons = sorted({t["message"] for t in tests})
        ctx.save(skipped=f"all {counts['skipped']} tests skipped: {'; '.join(reasons)[:200]}")
        return
    if not tests or counts["failed"] or counts["error"] or any(r.get("exit") not in (0, None) for r in runs):
        raise SystemExit(1)


# ---------------------------------------------------------------- 5. timing and 6. sweep
from benchmarks.gpu_session_profile import step_profile  # noqa: E402,F401
from benchmarks.gpu_session_timing import step_sweep, step_timing  # noqa: E402,F401


if __name__ == "__main__":  # python -m benchmarks.gpu_session_steps roofline ...: see gpu_session_timing
    from benchmarks.gpu_session_timing import roofline_main

    sys.exit(roofline_main(sys.argv[1:]))
