"""Run-time ISA dispatch of the native CPU extension (csrc/cpu/dispatch.cpp, setup.py):

- the level that runs is reported (``available_backends()``, ``esr backends``) and is the
  highest level built in that this CPU has, or the one ESR_CPU_ISA forces;
- forcing a level above the CPU's (or one that is not a level) is refused, clearly, by the ops
  and by the backend policy: never an illegal instruction;
- the fused-model CPU tests pass at every level this machine can run, forced (a subprocess per
  level, with torch capped to the same ISA as on a CPU that has only that level);
- the built library keeps every level's instructions inside that level's code (an inline
  helper shared by several levels must be linked from its lowest-level copy).

ESR_CPU_ISA is read once per process, when the extension first dispatches: the forced checks
run in subprocesses."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.native_cpu  # skipped unless the extension is built (conftest)

ROOT = Path(__file__).resolve().parents[2]
LEVELS = ("baseline", "avx2", "avx512", "avx512_bf16", "amx")
# What torch itself is capped to for a forced level, as on a CPU that has only that level
# (ATen's own kernels and oneDNN would otherwise still use AVX-512 here).
# The kernel sets that have the conv engine (Winograd / GEMM convs, csrc/cpu/gemm.h): avx2 and up.
ENGINE_LEVELS = LEVELS[LEVELS.index("avx2"):]
TORCH_CAPS = {"baseline": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41"},
              "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def _env(level: str | None, cap_torch: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("ESR_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    if level is not None:
        env["ESR_CPU_ISA"] = level
        if cap_torch:
            env.update(TORCH_CAPS.get(level, {}))
    return env


def _python(code: str, level: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(level), capture_output=True, text=True,
                          timeout=300)


_REPORT = """
import json, esr_kernels, torch
from esr_kernels import policy
b = esr_kernels.available_backends()
try:
    chosen = policy.resolve_backend("auto", torch.device("cpu"))
except RuntimeError as e:
    chosen = "error: " + str(e)
print(json.dumps({"backends": b, "auto": chosen}))
"""


def _report(level: str | None) -> dict:
    r = _python(_REPORT, level)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def _isa() -> dict:
    from esr_kernels import policy

    return policy.cpu_isa()


def _runnable_levels() -> list[str]:
    """The compiled kernel sets this CPU can run (not 'arch': an ESR_CPU_ARCH build has one)."""
    isa = _isa()
    cpu = LEVELS.index(isa["cpu"])
    return [c for c in isa["compiled"] if c in LEVELS and LEVELS.index(c) <= cpu]


def test_available_backends_reports_the_level_that_runs():
    import esr_kernels

    b = esr_kernels.available_backends()
    isa = b["cpu_isa_detail"]
    assert isa["cpu"] in LEVELS
    if os.environ.get("ESR_CPU_ISA") or isa["compiled"] == ["arch"]:
        pytest.skip("forced level or single-level (ESR_CPU_ARCH) build: checked by the forced tests")
    # Unforced: the highest compiled level that the CPU has.
    assert b["cpu_isa"] == _runnable_levels()[-1] == isa["running"]
    assert isa["error"] is None and isa["requested"] is None
    assert b["cpu_conv_engine"] == (b["cpu_isa"] in ENGINE_LEVELS)
    assert b["cpu_auto"] == "cpu" if b["cpu_conv_engine"] else b["cpu_auto"].startswith("reference: ")


def test_esr_backends_prints_the_level():
    r = subprocess.run([sys.executable, "-m", "esr_models.cli", "backends"], cwd=ROOT, env=_env(None),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["cpu_isa"] in _isa()["compiled"]
    assert shown["cpu_isa_detail"]["cpu"] == _isa()["cpu"]


def test_the_default_build_is_portable():
    """Every x86-64 default build has the baseline, AVX2, AVX-512 and AVX-512 BF16 levels (not
    -march=native)."""
    isa = _isa()
    if isa["compiled"] == ["arch"]:
        pytest.skip("built with ESR_CPU_ARCH (one level, for one machine)")
    import platform

    x86 = platform.machine() in ("x86_64", "AMD64")
    expected = ["baseline", "avx2", "avx512", "avx512_bf16"] if x86 else ["baseline"]
    assert isa["compiled"] == expected


@pytest.mark.parametrize("level", LEVELS)
def test_forcing_a_level(level):
    isa = _isa()
    if isa["compiled"] == ["arch"]:
        pytest.skip("built with ESR_CPU_ARCH: one level")
    rep = _report(level)
    b, detail = rep["backends"], rep["backends"]["cpu_isa_detail"]
    assert detail["requested"] == level
    if LEVELS.index(level) > LEVELS.index(isa["cpu"]):
        # Refused, by name, everywhere: nothing runs kernels this CPU does not have.
        assert b["cpu_isa"] is None and not b["cpu_conv_engine"]
        assert "asks for more than this CPU has" in detail["error"]
        assert rep["auto"].startswith("error: ") and "asks for more than this CPU has" in rep["auto"]
        assert b["cpu_auto"].startswith("error: ESR_CPU_ISA=")
        return
    # The highest compiled kernel set at or below the level (amx has no kernels of its own
    # yet: it runs avx512_bf16's).
    expected = [c for c in isa["compiled"] if LEVELS.index(c) <= LEVELS.index(level)][-1]
    assert detail["error"] is None
    assert b["cpu_isa"] == detail["running"] == expected
    assert b["cpu_conv_engine"] == (expected in ENGINE_LEVELS)
    # "auto" picks the native backend only where it was measured faster than eager PyTorch
    # (the levels with the conv engine; README, "One build for every x86-64 CPU").
    assert rep["auto"] == ("cpu" if expected in ENGINE_LEVELS else "reference")
    assert b["cpu_auto"] == rep["auto"] or b["cpu_auto"].startswith("reference: no conv engine")


_REFUSED = """
import torch, esr_kernels, esr_models
from esr_kernels import policy
for backend in ("cpu", "auto"):
    try:
        esr_models.load("rlfn", fused=True, backend=backend)
    except RuntimeError as e:
        print(backend, "refused:", e)
    else:
        print(backend, "ran")
try:
    torch.ops.esr_native.max_pool_7s3(torch.rand(1, 4, 9, 9))
except RuntimeError as e:
    print("op refused:", str(e).splitlines()[0])
"""


def _bad_level(value: str) -> tuple[str, str]:
    """("above": the level just above this CPU's, skipped on a CPU with the highest; else the
    name as given) and the reason the extension gives for refusing it."""
    cpu = _isa()["cpu"]
    if value != "above":
        return value, f"ESR_CPU_ISA={value} is not a level"
    if cpu == LEVELS[-1]:
        pytest.skip(f"this CPU has the highest level ({cpu})")
    value = LEVELS[LEVELS.index(cpu) + 1]
    return value, f"ESR_CPU_ISA={value} asks for more than this CPU has (its highest level is {cpu})"


@pytest.mark.parametrize("value", ["above", "avx9000"])
def test_a_level_above_the_cpu_or_unknown_is_refused(value):
    value, why = _bad_level(value)
    r = _python(_REFUSED, value)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("cpu refused:") and why in lines[0]
    assert lines[1].startswith("auto refused:") and why in lines[1]
    assert lines[2].startswith("op refused:") and why in lines[2]


def _esr(*args, level: str | None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "esr_models.cli", *map(str, args)], cwd=ROOT, env=_env(level),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("value", ["above", "avx9000"])
def test_the_cli_refuses_a_bad_level_for_every_command(value, tmp_path):
    """Issue 27: a bad ESR_CPU_ISA failed only with --fused: the reference ran as if it were
    fine. Every command refuses it up front (exit 2, nothing written); ``esr backends`` prints
    its report first (where the detail is), then the same error."""
    value, why = _bad_level(value)
    why = "error: environment variable " + why.split(" (its highest")[0]
    from PIL import Image

    Image.new("RGB", (20, 20)).save(tmp_path / "a.png")
    r = _esr("upscale", tmp_path / "a.png", "-o", tmp_path / "out", "--model", "pfdnlite", "-q", level=value)
    assert r.returncode == 2 and why in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    r = _esr("backends", level=value)
    assert r.returncode == 2 and why in r.stderr, r.stderr
    shown = json.loads(r.stdout)  # the report still comes, on stdout
    assert shown["cpu_auto"].startswith("error: ESR_CPU_ISA=") and shown["cpu_isa"] is None


def test_esr_backends_with_a_backend_exits_1_when_it_cannot_run():
    """Issue 27: `esr backends` said "error" inside its JSON and exited 0. Asked about a backend,
    it exits 1 when that backend cannot run here (the reason in the JSON and on stderr)."""
    r = _esr("backends", "cpu", level=None)
    assert r.returncode == 0, r.stderr
    asked = json.loads(r.stdout)["asked"]
    assert asked == {"backend": "cpu", "device": "cpu", "dtype": "float32", "runs": "cpu", "error": None}
    r = _esr("backends", "cuda", "--device", "cpu", level=None)  # the CUDA backend runs CUDA tensors only
    assert r.returncode == 1 and "error: backend 'cuda' cannot run on cpu" in r.stderr, r.stderr
    asked = json.loads(r.stdout)["asked"]
    assert asked["runs"] is None and "runs on cuda tensors, not cpu" in asked["error"]


# The fused-model CPU tests and the conv engine's op tests (odd sizes, batch 2, channel tails,
# non-contiguous inputs, the minimum size), forced to each level below the one that runs
# unforced (that one runs in the main session), so that a level this CI machine does not run
# by default (avx2 on an AVX-512 machine) cannot rot. Left to the main session, because no
# kernel path depends on them: Set5 PSNR (the same kernels as the golden images, on five more
# whole images: 25 s a level), torch.compile tracing and the schema-registration order
# (Python and subprocesses, not the level's code). ~2 min per level on a loaded 2-core VM.
LEVEL_INDEPENDENT = ("set5", "torch_compile", "whichever_extension_loads_first")
FUSED_TESTS = ["-k", "(not test_fused_models or cpu) and not " + " and not ".join(LEVEL_INDEPENDENT),
               "tests/models/test_fused_models.py", "tests/kernels/test_cpu_backend.py",
               "tests/kernels/test_native_ops.py", "tests/kernels/test_cpu_conv_engine.py"]


@pytest.mark.parametrize("level", LEVELS)
def test_fused_models_at_a_forced_level(level):
    if level not in _runnable_levels():
        pytest.skip(f"this build or CPU has no {level} level (kernels of its own, that this CPU runs)")
    if level == _runnable_levels()[-1] and not os.environ.get("ESR_CPU_ISA"):
        pytest.skip(f"{level} is the level that runs unforced: the main session tests it")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", *FUSED_TESTS],
                       cwd=ROOT, env=_env(level), capture_output=True, text=True, timeout=1200)
    tail = "\n".join(r.stdout.splitlines()[-30:])
    assert r.returncode == 0, f"ESR_CPU_ISA={level}:\n{tail}\n{r.stderr[-2000:]}"
    assert re.search(r"\d+ passed", tail), tail


# ---------------------------------------------------------------- the built library
def _functions_by_isa(path: str) -> dict[str, set[str]]:
    """Demangled function name -> the ISA classes of its instructions ('evex': AVX-512 registers
    or opmasks; 'vex': any other AVX instruction)."""
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", path], capture_output=True, text=True,
                         check=True).stdout
    funcs: dict[str, set[str]] = {}
    name = None
    head = re.compile(r"^[0-9a-f]+ <(.*)>:$")
    for line in out.splitlines():
        m = head.match(line)
        if m:
            name = m.group(1)
            funcs.setdefault(name, set())
            continue
        if name is None or "\t" not in line:
            continue
        insn = line.split("\t", 1)[1].strip()
        mnem = insn.split(" ", 1)[0]
        if "bf16" in mnem:  # vdpbf16ps, vcvtneps2bf16, vcvtne2ps2bf16
            funcs[name].add("bf16")
        if "%zmm" in insn or re.search(r"%k[0-7]", insn) or "{%k" in insn:
            funcs[name].add("evex")
        elif mnem.startswith("v") and mnem not in ("verr", "verw"):
            funcs[name].add("vex")
    return funcs


def _local_functions(path: str) -> set[str]:
    """Demangled names of the library's local (non-exported, non-weak) functions: GCC's clones
    (``[clone .constprop.0]``) and static helpers, each called only from the object file it was
    compiled in, so their instructions are that file's level's whatever their name."""
    out = subprocess.run(["nm", "-C", "--defined-only", path], capture_output=True, text=True, check=True).stdout
    binding: dict[str, set[str]] = {}
    for line in out.splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[1] in "tTwW":
            binding.setdefault(parts[2], set()).add(parts[1])
    return {name for name, kinds in binding.items() if kinds == {"t"}}


def test_each_levels_instructions_stay_in_its_code():
    if shutil.which("objdump") is None:
        pytest.skip("objdump not installed")
    isa = _isa()
    if isa["compiled"] == ["arch"]:
        pytest.skip("built with ESR_CPU_ARCH: one level, for one machine")
    spec = importlib.util.find_spec("esr_kernels._C_cpu")
    funcs = _functions_by_isa(spec.origin)
    assert any("esr_cpu::avx512::" in f for f in funcs) or "avx512" not in isa["compiled"]
    assert any("bf16" in c for c in funcs.values()) or "avx512_bf16" not in isa["compiled"]  # the bf16 GEMM
    # objdump leaves GCC's split-off parts (foo._omp_fn.0.cold) mangled.
    in_bf16 = ("esr_cpu::avx512_bf16::", "7esr_cpu11avx512_bf16")
    in_avx512 = ("esr_cpu::avx512::", "7esr_cpu6avx512") + in_bf16
    in_avx2 = ("esr_cpu::avx2::", "7esr_cpu4avx2")
    local = _local_functions(spec.origin) if shutil.which("nm") else set()
    bad = []
    for f, classes in funcs.items():
        if f in local:  # (another level's code cannot call it: it is not linked across objects)
            continue
        if "bf16" in classes and not any(s in f for s in in_bf16):
            bad.append(f"AVX512_BF16 outside esr_cpu::avx512_bf16: {f}")
        elif "evex" in classes and not any(s in f for s in in_avx512):
            bad.append(f"AVX-512 outside esr_cpu::avx512: {f}")
        elif "vex" in classes and not any(s in f for s in in_avx512 + in_avx2):
            bad.append(f"AVX outside esr_cpu::avx2/avx512: {f}")
    assert not bad, "\n".join(bad[:20])


def test_auto_warning_says_why_it_runs_the_reference():
    """Where "auto" falls back to the reference, the warning gives the backend's own reason
    (at an ISA level without the conv engine: that it was not measured faster), not "no fused
    kernels in this build"."""
    import torch

    from esr_kernels import policy

    why = policy.auto_reference_reason("cpu", torch.float32)
    reason = policy.cpu_auto_reason()
    assert why == reason if reason else "no fused kernels for cpu/float32" in why
    assert "no fused kernels for cpu/float64" in policy.auto_reference_reason("cpu", torch.float64)
