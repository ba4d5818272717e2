"""Loading the native extensions (esr_kernels._C_cpu, _C_cuda) with their fakes (native.py), and
why one did not import. The backends load their extension here and policy.py reports on it:
this module imports neither, so neither depends on the other to load.
"""
from __future__ import annotations

import importlib
import os

import torch

from .env import cpu_cache_limit_bytes, cpu_gemm_choice

# Why a native extension did not import, kept so that an ABI mismatch or a missing library is
# shown (``esr backends``, backend errors) instead of looking like "not built".
IMPORT_ERRORS: dict[str, str] = {}


def load_extension(name: str):
    """The module ``esr_kernels.<name>``, or None (the reason kept in IMPORT_ERRORS). The CPU
    extension gets its settings on first load (``_configure_cpu``)."""
    try:
        module = importlib.import_module(f"esr_kernels.{name}")
    except ImportError as exc:
        IMPORT_ERRORS[name] = f"{type(exc).__name__}: {exc}"
        return None
    if name == "_C_cpu" and not _CONFIGURED:
        _configure_cpu()
    return module


_CONFIGURED: list[bool] = []  # non-empty once the CPU extension has its settings


def _configure_cpu() -> None:
    """Hand the CPU extension its buffer-cache limit and its bf16 GEMM, parsed from
    ESR_CPU_CACHE_MB and ESR_CPU_GEMM by their one parser (env.py; the extension reads neither
    variable). A bad value raises
    InvalidValueError here, at every use of the extension until it is fixed: never a silent
    default. Read once per process, like ESR_CPU_ISA."""
    limit, gemm = cpu_cache_limit_bytes(), cpu_gemm_choice()
    ops = torch.ops.esr_native
    if hasattr(ops, "set_cache_limit"):  # an extension built before it reads the variable itself
        ops.set_cache_limit(-1 if limit is None else limit)
    if hasattr(ops, "set_bf16_gemm"):
        if gemm == "auto":  # brgemm where it reaches AMX tiles (env.CPU_GEMM_AUTO says why)
            # (asked of the ops directly: cpu_isa() would load, and so configure, again)
            info = dict(item.split("=", 1) for item in ops.cpu_isa_info())
            gemm = "brgemm" if at_amx_level(info) and bool(ops.brgemm_packs_weights()) else "own"
        ops.set_bf16_gemm(1 if gemm == "brgemm" else 0)
    _CONFIGURED.append(True)


def extension_error(name: str) -> str | None:
    """Why ``esr_kernels.<name>`` cannot be imported (None if it can)."""
    return None if load_extension(name) is not None else IMPORT_ERRORS.get(name)


def native_ops(name: str):
    """Import the native extension ``name`` ("_C_cpu" or "_C_cuda") with the Python fakes of
    its ops, and return ``torch.ops.esr_native``; a RuntimeError keeps the import error."""
    if load_extension(name) is None:
        raise RuntimeError(f"the native extension esr_kernels.{name} does not import: {IMPORT_ERRORS.get(name)}")
    # Imported here, not at the top: the fakes register against the op schemas, which exist
    # only once the extension has loaded.
    from . import native  # noqa: F401  fake implementations (torch.compile, opcheck)

    return torch.ops.esr_native


# ---------------------------------------------------------------- the CPU extension's ISA level
CPU_ISA_LEVELS = ("baseline", "avx2", "avx512", "avx512_bf16", "amx")


def cpu_isa() -> dict | None:
    """The ISA level of the CPU extension's kernels (csrc/cpu/dispatch.cpp), None without the
    extension: ``running`` (the compiled kernel set that runs: baseline, avx2, avx512, or arch
    for an ESR_CPU_ARCH build; None if none can), ``running_level`` (its ISA), ``cpu`` (this
    CPU's highest level), ``compiled`` (the kernel sets built in), ``requested`` (ESR_CPU_ISA,
    None if unset) and ``error`` (why nothing runs: ESR_CPU_ISA above the CPU's level or not a
    level; None if fine). ESR_CPU_ISA is read once, when the extension first dispatches."""
    if load_extension("_C_cpu") is None:
        return None
    if not hasattr(torch.ops.esr_native, "cpu_isa_info"):
        # An extension built before run-time dispatch (one -march build): one unnamed level.
        return {"running": "arch", "running_level": None, "cpu": None, "compiled": ["arch"], "requested": None,
                "error": None}
    info = dict(item.split("=", 1) for item in torch.ops.esr_native.cpu_isa_info())
    return {"running": info["running"] or None, "running_level": info["running_level"] or None,
            "cpu": info["cpu"], "compiled": [c for c in info["compiled"].split(",") if c],
            "requested": info["requested"] or None, "error": info["error"] or None}


def cpu_bf16_gemm() -> str:
    """Which bf16 GEMM the CPU extension runs now: "own" or "brgemm" (ESR_CPU_GEMM at load,
    ``esr_native.set_bf16_gemm`` since); "own" for an extension built before the choice."""
    ops = torch.ops.esr_native
    return "brgemm" if hasattr(ops, "bf16_gemm") and int(ops.bf16_gemm()) == 1 else "own"


def at_amx_level(isa: dict) -> bool:
    """Whether ``isa`` (``cpu_isa()``, or the extension's raw cpu_isa_info) is the amx level:
    the CPU has AMX and ESR_CPU_ISA forces no lower level. (That level runs the avx512_bf16
    kernel set, so ``running_level`` says avx512_bf16 there: it has no kernels of its own.)"""
    return isa.get("cpu") == "amx" and (isa.get("requested") or "auto") in ("auto", "amx")


def brgemm_on_amx_tiles() -> bool:
    """Whether oneDNN's brgemm runs bf16 on AMX tiles here (it repacks B for them:
    ``cpublas::could_pack``); False without the extension. Asked once per process."""
    if not _AMX_TILES:
        ops = torch.ops.esr_native
        _AMX_TILES.append(load_extension("_C_cpu") is not None and hasattr(ops, "brgemm_packs_weights")
                          and bool(ops.brgemm_packs_weights()))
    return _AMX_TILES[0]


_AMX_TILES: list[bool] = []


def bf16_direct_3x3() -> bool:
    """Whether the bf16 3x3 convs run as direct convolutions (csrc/cpu/direct_bf16.cpp) rather
    than Winograd: where the bf16 GEMM is oneDNN's brgemm on AMX tiles, the GEMMs are cheap
    and Winograd's float32 transforms are the cost (README: *bf16 GEMM: own micro-kernel or
    oneDNN's brgemm*). Asked at every call: ``esr_native.set_bf16_gemm`` may change the GEMM."""
    return cpu_bf16_gemm() == "brgemm" and brgemm_on_amx_tiles()


def bf16_gemm_available() -> bool:
    """Whether the running ISA level has the conv engine's bf16 GEMM (vdpbf16ps: avx512_bf16,
    amx); ESR_CPU_BF16_GEMM=0 turns it off (bf16 models then run float32 GEMMs, to compare)."""
    isa = cpu_isa()
    return (isa is not None and not isa["error"] and isa["running_level"] in ("avx512_bf16", "amx")
            and os.environ.get("ESR_CPU_BF16_GEMM", "1") != "0")
