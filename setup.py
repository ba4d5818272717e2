"""esr-kernels build.

Native kernels (csrc/) are built with torch's cpp_extension when torch is importable in the
build environment, so install with ``pip install --no-build-isolation -e .`` after installing
torch (an isolated build environment would have to download torch, which on a CPU machine
means the multi-GB CUDA wheel: this script never asks for torch at build time, and without
torch it installs the pure-Python package and says so).

Environment:
  ESR_SKIP_CUDA_BUILD=1     do not build the CUDA extension
  ESR_SKIP_CPU_BUILD=1      do not build the CPU extension
  TORCH_CUDA_ARCH_LIST      CUDA archs (default "8.0;9.0+PTX")
  MAX_JOBS                  parallel compile jobs (ninja)
  CUDA_HOME                 CUDA toolkit root; by default derived from the nvcc on PATH, even
                            a wrapper script (build_cuda_home.py)
The CUDA extension is built when nvcc is found and torch is a CUDA build; a visible GPU is
not needed. A missing nvcc is a warning, not an error.
"""
from __future__ import annotations

import glob
import os
import re
import platform
import shutil
import sys
import warnings

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes", "on")


def _set_cuda_home(torch) -> None:
    """Set CUDA_HOME from nvcc itself when the CUDA extension is to be built.

    Must run before torch.utils.cpp_extension is imported: it reads CUDA_HOME once, at import,
    and otherwise guesses the parent of nvcc's folder, wrong when nvcc on PATH is a wrapper
    (/usr/local/bin/nvcc -> CUDA_HOME=/usr/local, no cuda_runtime.h). See build_cuda_home.py.
    """
    if _truthy("ESR_SKIP_CUDA_BUILD") or torch.version.cuda is None:
        return
    sys.path.insert(0, ROOT)  # setuptools' PEP 517 backend does not put setup.py's folder there
    from build_cuda_home import CudaHomeError, find_cuda_home
    try:
        home = find_cuda_home()
    except CudaHomeError as e:
        sys.exit(f"esr-kernels: {e}")
    if home:
        os.environ["CUDA_HOME"] = home


def native_extensions():
    try:
        import torch
        _set_cuda_home(torch)  # before cpp_extension: it reads CUDA_HOME at import
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError:
        warnings.warn("torch is not importable in the build environment: installing without "
                      "native kernels. Install torch first and use `pip install "
                      "--no-build-isolation -e .` to build them.")
        return [], {}
    exts = []
    # csrc/common: the esr_native schemas (schemas.cpp), compiled into every native extension.
    common_sources = sorted(glob.glob(os.path.join("csrc", "common", "*.cpp")))
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp"))) + common_sources
    if cpu_sources and not _truthy("ESR_SKIP_CPU_BUILD"):
        # Built from source on the machine that runs it: tune for it (ESR_CPU_ARCH overrides).
        arch = os.environ.get("ESR_CPU_ARCH", "native")
        flags = ["-O3", "-fopenmp", f"-march={arch}", "-fno-math-errno", "-fno-trapping-math"]
        if platform.machine() in ("x86_64", "AMD64"):
            # GCC auto-vectorises with 256-bit vectors on AVX-512 machines unless told otherwise;
            # at 512 the elementwise epilogues (SiLU, GELU) made PFDNLite ~5% faster here
            # (alternating builds, 256x256: 77-85 vs 85-89 ms; IFADNet and RLFN within noise).
            flags.append("-mprefer-vector-width=512")
        exts.append(CppExtension(
            "esr_kernels._C_cpu", cpu_sources,
            extra_compile_args={"cxx": flags},
            extra_link_args=["-fopenmp"]))
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                          glob.glob(os.path.join("csrc", "cuda", "*.cpp"))) + common_sources
    if cuda_sources and not _truthy("ESR_SKIP_CUDA_BUILD"):
        # The nvcc cpp_extension will run: CUDA_HOME's (set above from the nvcc on PATH).
        nvcc = (os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
                if os.environ.get("CUDA_HOME") else shutil.which("nvcc"))
        if torch.version.cuda is None:
            print("esr-kernels: torch is a CPU build; skipping the CUDA extension", file=sys.stderr)
        elif not nvcc or not os.path.exists(nvcc):
            warnings.warn("nvcc not found: skipping the CUDA extension (Triton kernels still work)")
        else:
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")
            exts.append(CUDAExtension(
                "esr_kernels._C_cuda", cuda_sources,
                extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]}))
    if not exts:
        return [], {}
    return exts, {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = native_extensions()

def _torchvision_pin() -> list[str]:
    """spandrel imports torchvision. Unpinned, pip picks the newest torchvision, which asks for
    the newest torch and so replaces the installed one (on a CPU machine: with the multi-GB
    CUDA wheel). torchvision 0.(m+15).p is the build for torch 2.m.p: pin that."""
    try:
        import torch
    except ImportError:
        return []
    m = re.match(r"2\.(\d+)\.(\d+)", torch.__version__)
    return [f"torchvision==0.{int(m[1]) + 15}.{m[2]}"] if m else []


setup(
    name="esr-kernels",
    version="0.1.0",
    description="Fused GPU/CPU kernels and reference models for NTIRE 2024 efficient x4 super-resolution",
    long_description=open(os.path.join(ROOT, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["esr_models", "esr_models.*", "esr_kernels", "esr_kernels.*"]),
    package_data={"esr_models": ["data/*.png"]},  # the quick start's sample image
    # A range that an installed torch satisfies installs nothing more: on a CPU machine install
    # torch==2.13.0 (the CPU wheel) first; on a CUDA machine the torch already there is used.
    install_requires=["torch>=2.4", "numpy", "pillow", "pypng", "tqdm",
                      "tomli>=1.1; python_version < '3.11'"],  # training recipes are TOML
    extras_require={
        "triton": ["triton>=3.1"],
        "video": ["av>=14"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        "spandrel": ["spandrel>=0.4.2", *_torchvision_pin()],
        "ray": ["ray[data]>=2.60"],
        "test": ["pytest", "pytest-xdist", "pytest-benchmark", "triton>=3.1", "av>=14", "onnx>=1.14",
                 "onnxruntime>=1.16", "ray[data]>=2.60", "pyyaml", "safetensors", "einops"],
        "cpu-providers": ["onnx", "onnxruntime", "openvino"],
    },
    entry_points={"console_scripts": ["esr=esr_models.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
