"""Compile every Triton specialisation a fused model launches for real GPU architectures,
without a GPU, and check its resources. The models it records and the ``esr gpu-check`` command
live in the app layer (esr_models/cli/gpu_check.py): this module takes models or launches.

Recording (no GPU, no compilation): a model fused with backend "triton" runs on CPU under
``TRITON_INTERPRET=1`` while ``esr_kernels.ops`` launches
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
    report = check_launches(recorded, inputs)   # recorded: (arch, Launch, used_by) triples

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
kernel here is meant to fit in registers). ``esr gpu-check`` exits 1 on any violation.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import InvalidValueError

DEFAULT_ARCHS = (80, 86, 89, 90)

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
    before triton is imported: loading a model fused with backend "triton" on CPU does it).
    Nothing is computed: the model's outputs are garbage."""
    import torch

    # Here, not at the top: ops and triton/ import triton, which reads TRITON_INTERPRET once.
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


def make_input(dtype_name: str, layout: str, hw: tuple[int, int], batch: int):
    """A seeded (batch, 3, H, W) input of that dtype and layout ("nchw" or "channels_last")."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, *hw, generator=g).to(getattr(torch, dtype_name))
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


# ------------------------------------------------------------------ compiling (workers)
def _worker_init(cache_dir: str) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_CACHE_DIR"] = str(Path(cache_dir) / "triton")


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _res_usage(cubin: bytes, kernel_name: str) -> dict:
    """REG, STACK, SHARED, LOCAL of the cubin's kernel (cuobjdump -res-usage) and its number of
    local-memory stores in SASS (STL). The SASS is disassembled only when the kernel has stack
    or local memory: without either there is nothing an STL could store to (the count is 0),
    and disassembling is ~0.5 s a kernel, a third of a cold ``esr gpu-check``."""
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(cubin)
        path = f.name
    try:
        res = subprocess.run([_tool("cuobjdump"), "-res-usage", path], capture_output=True,
                             text=True, check=True).stdout
        m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", res)
        if m is None:
            raise RuntimeError(f"cannot parse cuobjdump -res-usage output for {kernel_name}: {res!r}")
        reg, stack, shared, local = (int(v) for v in m.groups())
        stores = 0
        if stack or local:
            sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True,
                                  text=True, check=True).stdout
            stores = len(re.findall(r"\bSTL(\.\w+)*\b", sass))
    finally:
        os.unlink(path)
    return {"regs": reg, "stack": stack, "static_shared": shared, "local": local, "local_stores": stores}


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


def check_archs(archs) -> None:
    """An InvalidValueError (a ValueError) for an arch without known limits, before recording."""
    unknown = [arch for arch in archs if arch not in ARCH_LIMITS]
    if unknown:
        raise InvalidValueError(f"no limits known for sm_{unknown[0]}; known: {sorted(ARCH_LIMITS)}")


def _specialisations(recorded, kernels) -> dict[tuple[int, str], dict]:
    """The distinct (arch, specialisation) of ``recorded`` ((arch, Launch, used_by) triples),
    each with its first launch and every input that made it."""
    specs: dict[tuple[int, str], dict] = {}
    for arch, launch, used_by in recorded:
        if kernels and launch.kernel not in kernels:
            continue
        entry = specs.setdefault((arch, launch.spec_key()), {"launch": launch, "used_by": []})
        if used_by not in entry["used_by"]:
            entry["used_by"].append(used_by)
    return specs


def _compile_all(jobs_list: list[dict], jobs: int, cache_dir: str) -> list[dict]:
    """compile_one for every job, in ``jobs`` spawned worker processes."""
    from concurrent.futures import ProcessPoolExecutor
    import multiprocessing

    # Workers must import triton without TRITON_INTERPRET, which this process has set.
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                 initargs=(cache_dir,)) as pool:
            return list(pool.map(compile_one, jobs_list))
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved


def _row(key: tuple[int, str], entry: dict, result: dict) -> dict:
    """One specialisation's line of the report: its launch, resources, occupancy and verdict."""
    arch, launch = key[0], entry["launch"]
    row = {"kernel": launch.kernel, "spec": key[1], "used_by": entry["used_by"],
           "constexprs": launch.constexprs, "num_warps": launch.num_warps, "num_stages": launch.num_stages}
    row.update({k: result.get(k) for k in ("regs", "shared", "stack", "local", "local_stores", "error")
                if k in result})
    if result.get("ok"):
        row.update(occupancy(result["regs"], result["shared"], launch.num_warps, arch))
    row["violations"] = verdict(result, arch)
    row["verdict"] = "FAIL" if row["violations"] else "ok"
    return row


def _summary(rows: list[dict]) -> dict:
    good = [r for r in rows if r.get("regs") is not None]
    return {"specialisations": len(rows),
            "failed": sum(r["verdict"] == "FAIL" for r in rows),
            "compile_errors": sum("error" in r for r in rows),
            "max_regs": max((r["regs"] for r in good), default=None),
            "at_255_regs": sum(r["regs"] >= MAX_REGS_PER_THREAD for r in good),
            "max_shared": max((r["shared"] for r in good), default=None),
            "with_local_memory": sum(bool(r["stack"] or r["local"]) for r in good),
            "max_local": max((r["stack"] + r["local"] for r in good), default=None),
            "min_warps_per_sm": min((r["warps_per_sm"] for r in good), default=None)}


def check_launches(recorded, inputs: dict, jobs: int = 2, cache_dir: str | Path | None = None,
                   kernels=None) -> dict:
    """Compile and judge every specialisation of ``recorded``, an iterable of (arch, Launch,
    used_by) triples (used_by names the input that made it, e.g. "rlfn/float16/nchw/40x40");
    iterating it is timed as the recording. ``inputs`` describes them in the report ("input");
    ``kernels``: only these kernel names (e.g. ``("_conv_kernel",)``), default all. Returns the
    report (the JSON ``esr gpu-check`` writes; its "command" is left None for the caller)."""
    import triton

    cache_dir = str(cache_dir or _cache_dir())
    t0 = time.perf_counter()
    specs = _specialisations(recorded, kernels)
    t_record = time.perf_counter() - t0
    jobs_list = []
    for (arch, spec_key), entry in specs.items():
        d = asdict(entry["launch"])
        d["tensors"] = {k: asdict(v) for k, v in entry["launch"].tensors.items()}
        jobs_list.append(d | {"arch": arch, "spec_key": spec_key, "cache_dir": cache_dir})
    t1 = time.perf_counter()
    results = _compile_all(jobs_list, jobs, cache_dir)
    t_compile = time.perf_counter() - t1

    report = {"triton": triton.__version__, "command": None, "input": inputs, "archs": {}, "violations": 0,
              "timing_s": {"record": round(t_record, 1), "compile": round(t_compile, 1),
                           "compiled": sum(not r.get("cached") for r in results),
                           "cached": sum(bool(r.get("cached")) for r in results)}}
    for (key, entry), result in zip(specs.items(), results):
        row = _row(key, entry, result)
        report["violations"] += len(row["violations"])
        report["archs"].setdefault(str(key[0]), {"limits": ARCH_LIMITS[key[0]], "specialisations": []})[
            "specialisations"].append(row)
    for a in report["archs"].values():
        a["summary"] = _summary(a["specialisations"])
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
            c = r["constexprs"]
            pixels = c.get("BLOCK_P", c.get("TILE_H", 0) * c.get("TILE_W", 0) or "")
            lines.append(f"  {r['kernel']:<16} {pixels:>7} {r['num_warps']:>2} "
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
