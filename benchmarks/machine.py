"""What CPU ran a benchmark, at which ISA level: recorded in every benchmark JSON
(``machine_info["esr_cpu"]``, through conftest's pytest-benchmark hook) and in the paired
rows' extra_info, so that numbers from an AVX2 laptop, an AVX-512 EPYC and an AMX Xeon, or
from a run forced lower with ESR_CPU_ISA, are never mixed up."""
from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

# Environment variables that change which kernels run (the project's and PyTorch/oneDNN's caps).
ISA_ENV = ("ESR_CPU_ISA", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "OMP_NUM_THREADS")


def cpu_model_name() -> str:
    """/proc/cpuinfo's "model name" (Linux), else platform's processor string."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_record() -> dict:
    """ISA levels (the extension's running level and this CPU's highest, from
    ``esr_kernels.policy.cpu_isa``), the CPU model, PyTorch's own CPU capability, threads and
    the environment caps that were set."""
    from esr_kernels.policy import cpu_isa

    isa = cpu_isa() or {}
    return {
        "running": isa.get("running"),            # None: no CPU extension, or a level that cannot run
        "running_level": isa.get("running_level"),
        "cpu_level": isa.get("cpu"),
        "compiled": isa.get("compiled"),
        "requested": isa.get("requested"),
        "isa_error": isa.get("error"),
        "cpu_model": cpu_model_name(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "env": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
    }
