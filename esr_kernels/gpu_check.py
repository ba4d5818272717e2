"""``esr gpu-check``: compile every Triton specialisation the fused models launch for real GPU
architectures, without a GPU, and check its resources.

Recording (no GPU, no compilation): the fused models (``esr_models.load(name, fused=True,
backend="triton")``) run on CPU under ``TRITON_INTERPRET=1`` while ``esr_kernels.ops`` launches
through a recording wrapper instead of ``wrap_triton``: each launch is recorded, not executed
(outputs stay uninitialised: only shapes, strides and dtypes matter), inside
``common.target_arch(arch, recording=True)`` so that the launchers choose the configuration
(BLOCK_P, num_warps, num_stages, tensor-core dots) that a GPU of that arch would get.

API (also used for memory-traffic models)::

    launches = record_launches(model, x, arch=86)   # list[Launch], in launch order
    launch.kernel, launch.module      # "_conv_kernel", "esr_kernels.triton.conv"
    launch.grid                       # (programs over pixels, batch)
    launch.tensors                    # {arg name: TensorArg(shape, dtype, strides, aligned16)}
    launch.scalars                    # {arg name: int or float}
    launch.constexprs                 # {arg name: value}, BLOCK_P included
    launch.num_warps, launch.num_stages

Compilation: ``triton.compile`` for ``GPUTarget("cuda", arch, 32)`` in worker processes started
without ``TRITON_INTERPRET`` (the interpreter replaces ``triton.jit``), with the specialisation
Triton's own launcher would make from the same arguments (its binder: ints equal to 1 become
constants, multiples of 16 and 16-byte aligned pointers get divisibility hints). Resources come
from the cubin through Triton's ``cuobjdump -res-usage`` (REG, STACK, LOCAL) and SASS (STL, local
stores), shared memory from the compiled kernel's metadata. Results are cached in
``$ESR_GPU_CHECK_CACHE`` (default ``~/.cache/esr-kernels/gpu-check``) by (kernel source hash,
specialisation, options, arch, triton version).

Verdict per (specialisation, arch): a violation is a compile failure, shared memory above the
arch's per-block opt-in limit, or any local memory (stack or local: spills are slow, and every
kernel here is meant to fit in registers). The command exits 1 on any violation.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ARCHS = (80, 86, 89, 90)
MODELS = ("ifadnet", "pfdnlite", "rlfn")
DTYPES = ("float32", "float16", "bfloat16")
LAYOUTS = ("nchw", "channels_last")
RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "gpu-resources.json"

# Per-SM and per-block limits (CUDA C Programming Guide, "Technical Specifications per Compute
# Capability"): registers per SM, resident warps and blocks per SM, shared memory per SM and the
# per-block opt-in maximum (bytes), the 1 KB the system reserves per block.
ARCH_LIMITS = {
    80: dict(regs_per_sm=65536, max_warps=64, max_blocks=32, smem_per_sm=167936, smem_per_block=166912),
    86: dict(regs_per_sm=65536, max_warps=48, max_blocks=16, smem_per_sm=102400, smem_per_block=101376),
    89: dict(regs_per_sm=65536, max_warps=48, max_blocks=24, smem_per_sm=102400, smem_per_block=101376),
    90: dict(regs_per_sm=65536, max_warps=64, max_blocks=32, smem_per_sm=233472, smem_per_block=232448),
}
SMEM_RESERVED_PER_BLOCK = 1024
REG_ALLOC_UNIT = 256  # registers are allocated per warp in units of 256
MAX_REGS_PER_THREAD = 255
TRITON_DEFAULT_OPTIONS = {"num_warps": 4, "num_stages": 3}  # the CUDA backend's defaults


@dataclass(frozen=True)
class TensorArg:
    shape: tuple
    dtype: str          # "float32", "float16", "bfloat16", ...
    strides: tuple      # in elements
    aligned16: bool     # data pointer a multiple of 16 bytes (Triton's pointer specialisation)


@dataclass
class Launch:
    """One recorded kernel launch (see the module docstring)."""
    kernel: str
    module: str
    grid: tuple
    tensors: dict
    scalars: dict
    constexprs: dict
    num_warps: int
    num_stages: int
    params: tuple = ()  # the kernel's parameter names, in order
    maxnreg: int | None = None  # ptxas register limit, when the launch sets one

    def spec_key(self) -> str:
        """What Triton specialises on: the same key, the same compiled kernel."""
        def scalar_class(v):
            if isinstance(v, bool):
                return f"b{int(v)}"
            if isinstance(v, int):
                if v == 1:
                    return "1"
                return ("i32" if -2**31 <= v < 2**31 else "i64") + ("/16" if v % 16 == 0 else "")
            return "fp32"
        args = []
        for name in self.params:
            if name in self.tensors:
                t = self.tensors[name]
                args.append(f"*{t.dtype}{'/16' if t.aligned16 else ''}")
            elif name in self.scalars:
                args.append(scalar_class(self.scalars[name]))
            else:
                args.append(f"={self.constexprs[name]!r}")
        key = f"{self.module}.{self.kernel}({','.join(args)})w{self.num_warps}s{self.num_stages}"
        return key + (f"r{self.maxnreg}" if self.maxnreg else "")


# ------------------------------------------------------------------ recording
def _is_constexpr(param) -> bool:
    ann = param.annotation
    return ann is not inspect.Parameter.empty and "constexpr" in (ann if isinstance(ann, str) else repr(ann))


class _Recorder:
    """Stands in for ``wrap_triton(kernel)``: ``rec[grid](*args, **kwargs)`` records a Launch."""

    def __init__(self, kernel, sink: list):
        self.kernel, self.sink = kernel, sink
        fn = kernel
        while hasattr(fn, "fn"):
            fn = fn.fn
        self.fn = fn
        self.sig = inspect.signature(fn)

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self._record(grid, args, kwargs)

    def _record(self, grid, args, kwargs):
        import torch

        options = dict(TRITON_DEFAULT_OPTIONS)
        for k in list(kwargs):
            if k not in self.sig.parameters:
                options[k] = kwargs.pop(k)
        bound = self.sig.bind(*args, **kwargs)
        tensors, scalars, constexprs = {}, {}, {}
        for name, param in self.sig.parameters.items():
            v = bound.arguments[name]
            if _is_constexpr(param):
                constexprs[name] = v.value if hasattr(v, "value") else v
            elif isinstance(v, torch.Tensor):
                tensors[name] = TensorArg(tuple(v.shape), str(v.dtype).replace("torch.", ""),
                                          tuple(v.stride()), v.data_ptr() % 16 == 0)
            else:
                scalars[name] = v
        self.sink.append(Launch(self.fn.__name__, self.fn.__module__, tuple(int(g) for g in grid),
                                tensors, scalars, constexprs, int(options["num_warps"]),
                                int(options["num_stages"]), tuple(self.sig.parameters),
                                options.get("maxnreg")))


def record_launches(model, x, arch: int) -> list[Launch]:
    """The Triton launches of ``model(x)`` (a model fused with backend "triton", x on CPU) as a
    GPU of ``arch`` (86 = sm_86) would make them, in order. Needs TRITON_INTERPRET=1 (set
    before triton is imported: ``esr_models.load(..., backend="triton")`` on CPU does it).
    Nothing is computed: the model's outputs are garbage."""
    import torch

    from . import ops
    from .triton.common import target_arch

    sink: list[Launch] = []
    real = ops.wrap_triton
    ops.wrap_triton = lambda kernel: _Recorder(kernel, sink)
    try:
        with target_arch(arch, recording=True), torch.inference_mode():
            model(x)
    finally:
        ops.wrap_triton = real
    return sink


# Recorded input sizes (H, W): Triton specialises integer arguments (sizes, strides) on
# divisibility by 16, so one size reaches only some specialisations: 40x40 gives H*W % 16 == 0
# with W % 16 != 0; the odd 47x59 gives neither (what odd images and NCHW channel strides make).
DEFAULT_SIZES = ((40, 40), (47, 59))


def parse_sizes(text) -> tuple[tuple[int, int], ...]:
    """"40" -> ((40, 40),); "40x40,47x59" -> ((40, 40), (47, 59))."""
    out = []
    for item in str(text).split(","):
        item = item.strip().lower()
        if not item:
            continue
        h, _, w = item.partition("x")
        out.append((int(h), int(w or h)))
    if not out or min(min(hw) for hw in out) < 1:
        raise ValueError(f"sizes {text!r}: expected HxW[,HxW...]")
    return tuple(out)


def _input(dtype_name: str, layout: str, hw: tuple[int, int], batch: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *hw, generator=g).to(getattr(torch, dtype_name))
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def record_models(arch: int, models=MODELS, dtypes=DTYPES, layouts=LAYOUTS, sizes=DEFAULT_SIZES,
                  batch: int = 2) -> list[tuple[Launch, str]]:
    """(Launch, "model/dtype/layout/HxW") for every launch of every combination."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    import esr_models

    out = []
    for name in models:
        for dt in dtypes:
            model = esr_models.load(name, fused=True, backend="triton", dtype=getattr(torch, dt))
            for layout in layouts:
                for hw in parse_sizes(",".join(f"{h}x{w}" for h, w in sizes)):
                    for launch in record_launches(model, _input(dt, layout, hw, batch), arch):
                        out.append((launch, f"{name}/{dt}/{layout}/{hw[0]}x{hw[1]}"))
    return out


# ------------------------------------------------------------------ compiling (workers)
def _worker_init(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = str(Path(cache_dir) / "triton")


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _res_usage(cubin: bytes, kernel_name: str) -> dict:
    """REG, STACK, SHARED, LOCAL of the cubin's kernel (cuobjdump -res-usage) and its number of
    local-memory stores in SASS (STL)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True,
                             text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True,
                              text=True, check=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
    if m is None:
        raise RuntimeError(f"cannot parse cuobjdump -res-usage output for {kernel_name}: {res!r}")
    reg, stack, shared, local = (int(v) for v in m.groups())
    return {"regs": reg, "stack": stack, "static_shared": shared, "local": local,
            "local_stores": len(re.findall(r"\bSTL(\.\w+)*\b", sass))}


def _fake_arg(t: TensorArg):
    import torch

    dtype = getattr(torch, t.dtype)
    base = torch.empty(64, dtype=dtype)
    return base if t.aligned16 else base[1:]  # off by one element: not 16-byte aligned


def _source_hash(kernel) -> str:
    return kernel.cache_key  # hashes the source of the kernel and every jit function it calls


def compile_one(job: dict) -> dict:
    """Compile one recorded launch (``job``: module, kernel, params, tensors, scalars,
    constexprs, num_warps, num_stages, arch, cache_dir) and measure it. Runs in a worker."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = getattr(importlib.import_module(job["module"]), job["kernel"])
    if not hasattr(kernel, "params"):
        raise RuntimeError("compile_one needs compiled Triton (TRITON_INTERPRET unset in the worker)")
    key_src = json.dumps({k: job[k] for k in ("spec_key", "arch")} | {
        "src": _source_hash(kernel), "triton": triton.__version__}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:32]
    cache = Path(job["cache_dir"]) / f"{key}.json"
    if cache.is_file():
        return json.loads(cache.read_text()) | {"cached": True}

    t0 = time.perf_counter()
    target = GPUTarget("cuda", job["arch"], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    args = []
    for name in job["params"]:
        if name in job["tensors"]:
            args.append(_fake_arg(TensorArg(**job["tensors"][name])))
        elif name in job["scalars"]:
            args.append(job["scalars"][name])
        else:
            args.append(job["constexprs"][name])
    kwargs = {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    if job.get("maxnreg"):
        kwargs["maxnreg"] = job["maxnreg"]
    try:
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
        compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                                  options=options.__dict__)
        usage = _res_usage(compiled.asm["cubin"], job["kernel"])
        result = {"ok": True, "shared": int(compiled.metadata.shared) + usage["static_shared"], **usage}
    except Exception as exc:  # an out-of-resources or compiler error is the finding, not a crash
        result = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:500]}
    result["compile_s"] = round(time.perf_counter() - t0, 2)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(result))
    tmp.replace(cache)
    return result | {"cached": False}


# ------------------------------------------------------------------ verdict
def occupancy(regs: int, shared: int, num_warps: int, arch: int) -> dict:
    """Resident warps per SM for a block of ``num_warps`` warps using ``regs`` registers per
    thread and ``shared`` bytes of shared memory, and what limits it."""
    lim = ARCH_LIMITS[arch]
    regs_per_warp = -(-max(regs, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    by = {"regs": (lim["regs_per_sm"] // regs_per_warp) // num_warps,
          "warps": lim["max_warps"] // num_warps, "blocks": lim["max_blocks"]}
    if shared:
        by["shared"] = lim["smem_per_sm"] // (shared + SMEM_RESERVED_PER_BLOCK)
    blocks = min(by.values())
    limiter = min(by, key=lambda k: by[k])
    return {"blocks_per_sm": blocks, "warps_per_sm": blocks * num_warps,
            "occupancy": round(blocks * num_warps / lim["max_warps"], 3), "limited_by": limiter}


def verdict(result: dict, arch: int) -> list[str]:
    if not result.get("ok"):
        return [f"compile failed: {result.get('error')}"]
    out = []
    limit = ARCH_LIMITS[arch]["smem_per_block"]
    if result["shared"] > limit:
        out.append(f"shared memory {result['shared']} B > {limit} B per block on sm_{arch}")
    if result["stack"] or result["local"]:
        out.append(f"local memory: stack {result['stack']} B + local {result['local']} B per thread "
                   f"({result['local_stores']} STL)")
    return out


# ------------------------------------------------------------------ the check
def _cache_dir() -> Path:
    env = os.environ.get("ESR_GPU_CHECK_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "esr-kernels" / "gpu-check"


def run_check(archs=DEFAULT_ARCHS, models=MODELS, dtypes=DTYPES, layouts=LAYOUTS, sizes=DEFAULT_SIZES,
              batch: int = 2, jobs: int = 2, cache_dir: str | Path | None = None,
              kernels=None) -> dict:
    """Record, compile and judge; returns the report (the JSON ``esr gpu-check`` writes).
    ``kernels``: only these kernel names (e.g. ``("_conv_kernel",)``), default all."""
    import triton
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    cache_dir = str(cache_dir or _cache_dir())
    t0 = time.perf_counter()
    specs: dict[tuple[int, str], dict] = {}
    for arch in archs:
        if arch not in ARCH_LIMITS:
            raise ValueError(f"no limits known for sm_{arch}; known: {sorted(ARCH_LIMITS)}")
        for launch, used_by in record_models(arch, models, dtypes, layouts, sizes, batch):
            if kernels and launch.kernel not in kernels:
                continue
            key = (arch, launch.spec_key())
            entry = specs.setdefault(key, {"launch": launch, "used_by": []})
            if used_by not in entry["used_by"]:
                entry["used_by"].append(used_by)
    t_record = time.perf_counter() - t0

    jobs_list = []
    for (arch, spec_key), entry in specs.items():
        d = asdict(entry["launch"])
        d["tensors"] = {k: asdict(v) for k, v in entry["launch"].tensors.items()}
        jobs_list.append(d | {"arch": arch, "spec_key": spec_key, "cache_dir": cache_dir})
    t1 = time.perf_counter()
    # Workers must import triton without TRITON_INTERPRET, which this process has set.
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(cache_dir,)) as pool:
            results = list(pool.map(compile_one, jobs_list))
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    t_compile = time.perf_counter() - t1

    report = {"triton": triton.__version__, "command": "esr gpu-check " + " ".join(
                  shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["gpu-check"] else None,
              "input": {"batch": batch, "sizes": [list(hw) for hw in sizes], "models": list(models), "dtypes": list(dtypes),
                        "layouts": list(layouts)},
              "archs": {}, "violations": 0,
              "timing_s": {"record": round(t_record, 1), "compile": round(t_compile, 1),
                           "compiled": sum(not r.get("cached") for r in results),
                           "cached": sum(bool(r.get("cached")) for r in results)}}
    for job, (key, entry), result in zip(jobs_list, specs.items(), results):
        arch = key[0]
        launch: Launch = entry["launch"]
        row = {"kernel": launch.kernel, "spec": key[1], "used_by": entry["used_by"],
               "constexprs": launch.constexprs, "num_warps": launch.num_warps,
               "num_stages": launch.num_stages}
        row.update({k: result.get(k) for k in ("regs", "shared", "stack", "local", "local_stores", "error")
                    if k in result})
        if result.get("ok"):
            row.update(occupancy(result["regs"], result["shared"], launch.num_warps, arch))
        row["violations"] = verdict(result, arch)
        row["verdict"] = "FAIL" if row["violations"] else "ok"
        report["violations"] += len(row["violations"])
        report["archs"].setdefault(str(arch), {"limits": ARCH_LIMITS[arch], "specialisations": []})[
            "specialisations"].append(row)
    for arch, a in report["archs"].items():
        rows = a["specialisations"]
        good = [r for r in rows if r.get("regs") is not None]
        a["summary"] = {"specialisations": len(rows),
                        "failed": sum(r["verdict"] == "FAIL" for r in rows),
                        "compile_errors": sum("error" in r for r in rows),
                        "max_regs": max((r["regs"] for r in good), default=None),
                        "at_255_regs": sum(r["regs"] >= MAX_REGS_PER_THREAD for r in good),
                        "max_shared": max((r["shared"] for r in good), default=None),
                        "with_local_memory": sum(bool(r["stack"] or r["local"]) for r in good),
                        "max_local": max((r["stack"] + r["local"] for r in good), default=None),
                        "min_warps_per_sm": min((r["warps_per_sm"] for r in good), default=None)}
    return report


_SHOWN = ("KSIZE", "STRIDE", "CI_BLOCK", "CO_PAD", "CP", "CR", "HAS_GATE", "RES_MODE", "HAS_RES",
          "SHUFFLE", "PARTIAL", "HAS_SHIFT")


def describe(constexprs: dict) -> str:
    """The constexprs that tell specialisations of one kernel apart, compactly."""
    return " ".join(f"{k.lower()}={int(v) if isinstance(v, bool) else v}" for k, v in constexprs.items()
                    if k in _SHOWN and v not in (0, False))


def format_table(report: dict) -> str:
    lines = []
    for arch, a in report["archs"].items():
        lines.append(f"sm_{arch}  (per-block shared limit {a['limits']['smem_per_block']} B, "
                     f"{a['limits']['max_warps']} warps/SM)")
        lines.append(f"  {'kernel':<16} {'BLOCK_P':>7} {'w':>2} {'s':>2} {'regs':>4} {'shared':>7} "
                     f"{'local':>6} {'warps/SM':>8}  verdict  used by")
        for r in a["specialisations"]:
            local = (r.get("stack") or 0) + (r.get("local") or 0)
            used = r["used_by"][0] + (f" +{len(r['used_by']) - 1}" if len(r["used_by"]) > 1 else "")
            lines.append(f"  {r['kernel']:<16} {r['constexprs'].get('BLOCK_P', ''):>7} {r['num_warps']:>2} "
                         f"{r['num_stages']:>2} {str(r.get('regs', '-')):>4} {str(r.get('shared', '-')):>7} "
                         f"{local:>6} {str(r.get('warps_per_sm', '-')):>8}  {r['verdict']:<7}  {used}  "
                         f"[{describe(r['constexprs'])}]")
            for v in r["violations"]:
                lines.append(f"      ! {v}")
        s = a["summary"]
        lines.append(f"  sm_{arch}: {s['specialisations']} specialisations, {s['failed']} failing; max regs "
                     f"{s['max_regs']} ({s['at_255_regs']} at 255), max shared {s['max_shared']} B, "
                     f"{s['with_local_memory']} with local memory (max {s['max_local']} B/thread)")
        lines.append("")
    t = report["timing_s"]
    lines.append(f"recorded in {t['record']} s, compiled {t['compiled']} (+{t['cached']} cached) in "
                 f"{t['compile']} s; {report['violations']} violation(s)")
    return "\n".join(lines)


def _csv_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def _csv(choices):
    def parse(text):
        vals = tuple(v.strip() for v in text.split(",") if v.strip())
        bad = [v for v in vals if v not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(choices)}")
        return vals
    return parse


def cmd_gpu_check(args) -> int:
    report = run_check(args.arch, args.models, args.dtypes, args.layouts, args.sizes, args.batch,
                       args.jobs, args.cache_dir, args.kernels)
    print(format_table(report))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if report["violations"] else 0


def add_parser(sub) -> None:
    p = sub.add_parser("gpu-check", help="compile the Triton kernels for GPU archs (no GPU needed) "
                                         "and check registers, shared and local memory")
    p.add_argument("--arch", type=_csv_ints, default=DEFAULT_ARCHS,
                   help="comma-separated compute capabilities (default 80,86,89,90)")
    p.add_argument("--json", metavar="PATH", help=f"write the report here (e.g. {RESULTS})")
    p.add_argument("--models", type=_csv(MODELS), default=MODELS)
    p.add_argument("--dtypes", type=_csv(DTYPES), default=DTYPES)
    p.add_argument("--layouts", type=_csv(LAYOUTS), default=LAYOUTS)
    p.add_argument("--kernels", type=lambda t: tuple(v for v in t.split(",") if v), default=None,
                   help="only these kernels (e.g. _conv_kernel,_bsb_kernel)")
    p.add_argument("--size", "--sizes", dest="sizes", type=parse_sizes, default=DEFAULT_SIZES,
                   help="input sizes while recording, HxW[,HxW...] (default 40x40,47x59: both "
                        "divisibility classes of the size and stride arguments)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--jobs", type=int, default=2, help="compiler processes")
    p.add_argument("--cache-dir", default=None, help="default $ESR_GPU_CHECK_CACHE or "
                                                     "~/.cache/esr-kernels/gpu-check")
    p.set_defaults(func=cmd_gpu_check)
