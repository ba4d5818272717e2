"""Launch configurations of the Triton kernels, per GPU architecture.

A configuration is (BLOCK_P pixels per program, num_warps, num_stages). The launchers ask
``launch_config(kernel, arch, dtype, **sizes)`` with ``arch`` from ``common.launch_arch`` (the
tensor's CUDA capability, 86 for sm_86, or the one forced by ``common.target_arch``); ``arch``
None is the interpreter, which runs few large numpy-vectorised programs instead.

The table is checked by ``esr gpu-check`` (esr_kernels/gpu_check.py): every configuration the
fused models launch must compile for sm_80/86/89/90 with no local memory (no spills, no stack)
and within the arch's per-block shared memory. Changing a number here changes no answer: every
program computes whole pixels, and the reduction order over input channels and taps is the
same for any BLOCK_P (tests/kernels/test_triton_gpu_configs.py runs each arch's configuration through
the interpreter against esr_kernels.reference).
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass

import torch

# Architectures with their own row below; another arch takes the closest one at or below it
# (sm_75 and older: sm_80's, which fits their limits no worse than any other row).
KNOWN_ARCHS = (80, 86, 89, 90)


@dataclass(frozen=True)
class LaunchConfig:
    block_p: int
    num_warps: int = 4
    num_stages: int = 3
    ci_block: int | None = None  # input channels per dot (K); None: the launcher's default
    maxnreg: int | None = None   # ptxas register limit (.maxnreg); None: ptxas chooses

    def launch_kwargs(self) -> dict:
        kw = {"num_warps": self.num_warps, "num_stages": self.num_stages}
        if self.maxnreg is not None:
            kw["maxnreg"] = self.maxnreg
        return kw


INTERPRETER = LaunchConfig(block_p=4096)


def table_arch(arch: int) -> int:
    """The row of ``KNOWN_ARCHS`` that serves ``arch``."""
    rows = [a for a in KNOWN_ARCHS if a <= arch]
    return rows[-1] if rows else KNOWN_ARCHS[0]


KERNELS = ("conv", "conv_tc", "concat_conv", "bsb", "bsb_dw", "esa_down", "esa_low", "esa_out", "esa_down_tc",
           "esa_low_tc", "esa_out_tc", "la_reduce", "la_reduce_tc", "gate")

# Which dense-conv kernel "auto" runs on a GPU (issue 28, item 7: per op, what the last lent GPU
# measured faster). v2 (conv_tc.py, the tensor-core implicit GEMM) has not run on a GPU yet: the
# last measurement (H200, 2026-11-28) timed v1 only, so "auto" stays on v1 until a GPU session's
# A/B (benchmarks/gpu_session.py times both) says otherwise. ESR_TRITON_CONV or
# ``conv_kernel(...)`` choose explicitly.
AUTO_CONV = "v1"
AUTO_CONV_MEASURED = "H200, 2026-11-28 (v1 only; v2 not yet timed on a GPU)"
_CONV_CHOICE: contextvars.ContextVar = contextvars.ContextVar("esr_conv_kernel", default=None)


@contextlib.contextmanager
def conv_kernel(choice: str):
    """Within this block the dense conv runs kernel ``choice`` ("auto", "v1" or "v2") whatever
    ESR_TRITON_CONV says (the GPU session's A/B; tests)."""
    from ..env import TRITON_CONV_CHOICES

    if choice not in TRITON_CONV_CHOICES:
        raise ValueError(f"unknown conv kernel {choice!r}; expected one of {TRITON_CONV_CHOICES}")
    token = _CONV_CHOICE.set(choice)
    try:
        yield
    finally:
        _CONV_CHOICE.reset(token)


def conv_choice() -> str:
    """The dense-conv kernel chosen for this process or block, "v1" or "v2" ("auto" resolved to
    ``AUTO_CONV``), before ``conv_version``'s per-conv exceptions."""
    from ..env import triton_conv_choice

    choice = _CONV_CHOICE.get() or triton_conv_choice()
    return AUTO_CONV if choice == "auto" else choice


def conv_version(gated: bool, gpu_arch: int | None, ieee_dots: bool, tf32_dots: bool) -> str:
    """"v1" or "v2" for one dense conv: the explicit choice, else ``AUTO_CONV``, except where v2
    does not serve: a gated input (PFDNLite's gated convs), and on a GPU (``gpu_arch``: the
    architecture launched or recorded for; None for the interpreter's own runs) IEEE float32
    dots (FMA dots over 128 x 64 tiles would spill) and TF32 dots before sm_90 (v2's float32
    tiles spilled in some convs there: ptxas held them at 80-128 registers). Those run v1."""
    choice = conv_choice()
    gpu_fma = gpu_arch is not None and (ieee_dots or (tf32_dots and gpu_arch < 90))
    if choice == "v2" and (gated or gpu_fma):
        return "v1"
    return choice


def aux_version(x: torch.Tensor, weight_dtype: torch.dtype) -> str:
    """"v1" or "v2" for one ESA (esa.py or esa_tc.py) or LocalAttention reduction (la_reduce.py's
    two kernels) on input ``x`` with weights of ``weight_dtype``: v2 with the v2 conv chosen,
    except IEEE float32 dots on a GPU (``common.dots_arch``), which run v1 as the convs do
    (``esr gpu-check`` compiles v2 in float32 with TF32 dots only)."""
    from .common import DOT_IEEE, dot_precision, dots_arch

    ieee_on_gpu = dots_arch(x) is not None and dot_precision(weight_dtype) == DOT_IEEE
    return "v2" if conv_choice() == "v2" and not ieee_on_gpu else "v1"

# {kernel: LaunchConfig} forced for GPU launches within ``override`` (launch-configuration
# sweeps, benchmarks/gpu_session.py); empty otherwise.
_OVERRIDES: contextvars.ContextVar = contextvars.ContextVar("esr_launch_overrides", default={})


@contextlib.contextmanager
def override(kernel: str, config: LaunchConfig):
    """Within this block, GPU launches of ``kernel`` use ``config`` (BLOCK_P, warps, ...)
    instead of the table's; the interpreter keeps its own. For sweeps: answers do not depend on
    the configuration (see the module docstring), only speed and resources do."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {KERNELS}")
    token = _OVERRIDES.set({**_OVERRIDES.get(), kernel: config})
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def launch_config(kernel: str, arch, dtype: torch.dtype, **sizes) -> LaunchConfig:
    """The configuration of ``kernel`` (one of ``KERNELS``) for GPU ``arch`` (None: the
    interpreter) and weights/activations of ``dtype``; ``sizes`` are the kernel's channel
    counts and flags (see each launcher)."""
    if arch is None:
        return INTERPRETER
    forced = _OVERRIDES.get().get(kernel)
    if forced is not None:
        return forced
    return _gpu_config(kernel, table_arch(int(arch)), dtype, sizes)


def _gpu_config(kernel: str, arch: int, dtype: torch.dtype, sizes: dict) -> LaunchConfig:
    cfg = _gpu_config_table(kernel, arch, dtype, sizes)
    if cfg.maxnreg is None and _spills_under_the_register_cap(kernel, arch, dtype, sizes):
        cfg = LaunchConfig(cfg.block_p, cfg.num_warps, cfg.num_stages, cfg.ci_block, maxnreg=255)
    return cfg


def _spills_under_the_register_cap(kernel: str, arch: int, dtype: torch.dtype, sizes: dict) -> bool:
    """Launches whose ptxas register choice spilled (a few bytes of stack) and which fit once
    allowed 255 registers (``maxnreg``)."""
    float32 = dtype == torch.float32
    return (
        # ptxas (Triton 3.9 passes --regAllocOptLevel=2) capped some float32 convs and
        # la_reduce at exactly 128 registers on sm_80/sm_90 and spilled 8-16 bytes (the
        # pixel-shuffle tail on sm_86 likewise).
        # Triton 3.6's ptxas did the same to the float32 concat_conv (80 registers, 8 bytes,
        # IEEE dots, sm_90).
        (float32 and kernel in ("conv", "concat_conv", "la_reduce"))
        # Triton 3.6's ptxas held RLFN's float32 (TF32) esa_out at 80 registers with an 8-byte
        # stack on sm_90.
        or (float32 and kernel == "esa_out")
        # Triton 3.6 on sm_90: PFDNLite's float16 gated residual conv on v2's padded layout got
        # 40 registers and an 8-byte stack at 8 warps.
        or (kernel == "conv" and bool(sizes.get("gate")) and arch >= 90 and not float32))


def _gpu_config_table(kernel: str, arch: int, dtype: torch.dtype, sizes: dict) -> LaunchConfig:
    # num_stages=1 everywhere: the only loops are over input-channel blocks (one to four
    # iterations) and pool windows; software pipelining them (Triton's default, 3 stages) buys
    # no overlap worth having and multiplies the shared-memory staging of every load by 3: the
    # gated conv needed 212,992 B per block (sm_86/89 allow 101,376).
    if kernel == "conv":
        # K = 16 input channels per dot: the [BLOCK_P, CI_BLOCK] input tiles and their int64
        # addresses are what fills the registers (64 channels: 255 registers and spills; 32:
        # ptxas capped itself at 128 registers and spilled), the [CI_BLOCK, CO_PAD] weights too.
        if sizes.get("gate"):
            # x and the four bilinear taps of att per input tile: half the pixels (32 pixels
            # took 216-254 registers on sm_86; 8 warps, 128 and a 16-byte spill).
            if arch >= 90 and dtype != torch.float32:
                # Triton 3.6's ptxas (the lent H200's image) gave PFDNLite's fp16 channels_last
                # gated residual conv 72 registers and an 8-byte stack at 4 warps; at 8 warps
                # every gated specialisation fits on sm_90 under Triton 3.6 and 3.9 alike (on
                # sm_86/89 8 warps spills instead, so they keep 4).
                return LaunchConfig(block_p=16, num_warps=8, num_stages=1, ci_block=16)
            return LaunchConfig(block_p=16, num_warps=4, num_stages=1, ci_block=16)
        if sizes.get("shuffle") and dtype == torch.float32:
            # ptxas capped this one at 96 registers and spilled 16 bytes; allowed 255, it fits.
            return LaunchConfig(block_p=32, num_warps=4, num_stages=1, ci_block=16, maxnreg=255)
        return LaunchConfig(block_p=32, num_warps=4, num_stages=1, ci_block=16)
    if kernel == "concat_conv":
        # v1's 1x1 conv (32 pixels x all output channels, K = 16 per dot) reading its K blocks
        # from several features.
        return LaunchConfig(block_p=32, num_warps=4, num_stages=1, ci_block=16)
    if kernel == "conv_tc":
        # 8 x 16 output pixels (M = 128: one warpgroup MMA on sm_90, 4 warps x 32 rows of
        # mma.sync before), 3 stages of cp.async in flight. K per step (read from the sm_90
        # SASS, fp16, channels_last, 540x960): the per-step address, mask and pipeline
        # bookkeeping (~130 warp-instructions at K = 16, ~270 at K = 64) is what the issue count
        # is made of, so a 48 -> 48 3x3 issued 110 warp-instructions per pixel at K = 16 and 76
        # (+ 23 outside the loop) at K = 64: all input channels up to 64 in one step per tap.
        # CI_BLOCK is the channel block of the launches that do not take one step per tap
        # (``conv_tc.tap_parts``: sm_80/86/89, more than 64 channels, multiples of 8 but not of
        # 16): 16 when the count is not a multiple of 8 (a block masked per channel at K = 64
        # cost more than three steps of 16: 234 against 166). float32 (TF32): at most 32, so that
        # 3 stages of [128 x K] fp32 fit sm_86/89's 99 KB.
        # sm_80/86/89 (mma.sync: operands through registers): 8 warps, where 4 took 128-255
        # registers and spilled 8-64 bytes in some of PFDNLite's and IFADNet's convs.
        c_in = int(sizes.get("c_in", 16))
        cap = 32 if dtype == torch.float32 else 64
        ci_block = min(max(16, 1 << max(c_in - 1, 1).bit_length()), cap) if c_in % 8 == 0 or c_in < 16 else 16
        if arch < 90 and c_in < 16:
            # the interior tiles' unmasked K loop (conv_tc.py) is unrolled: on sm_80 ptxas gave
            # PFDNLite's and RLFN's stem convs (C_in 3) 64 registers and a 16-byte spill;
            # allowed 128 (8 warps: the register file holds them), none spill. Not the others:
            # capped at 128, Triton 3.6 spilled 8 B in RLFN's 48-channel convs on sm_86.
            return LaunchConfig(block_p=128, num_warps=8, num_stages=3, ci_block=ci_block, maxnreg=128)
        return LaunchConfig(block_p=128, num_warps=4 if arch >= 90 else 8, num_stages=3, ci_block=ci_block)
    if kernel == "bsb_dw":
        # v2's depthwise half: 8 x 16 pixels x the channels as 32 + 8 (IFADNet's 36) float32
        # accumulators, the taps as a runtime loop: 104-127 registers, no spill on sm_80-90;
        # sm_90 fp16 106 warp-instructions per pixel against 128 at 4 x 16. (With all 64 padded
        # channels, 8 x 16 pixels took 255 registers and spilled 100-180 B with the residual.)
        return LaunchConfig(block_p=128, num_warps=4, num_stages=1)
    if kernel == "bsb":
        # The pointwise conv is recomputed per tap into a second [BLOCK_P, CO_PAD] float32
        # tile beside the accumulator: 64 input channels at a time took 255 registers + spills.
        return LaunchConfig(block_p=32, num_warps=4, num_stages=1, ci_block=16)
    if kernel == "esa_down":
        return LaunchConfig(block_p=32, num_warps=4, num_stages=1, ci_block=16)
    if kernel == "esa_out":
        # x, the expansion and the gate as [BLOCK_P, CP] float32 tiles: 64 pixels spilled, and
        # 32 in float32 (IEEE dots) still 8 bytes.
        return LaunchConfig(block_p=16 if dtype == torch.float32 else 32, num_warps=4, num_stages=1)
    if kernel in ("esa_down_tc", "esa_low_tc", "esa_out_tc"):
        # v2's ESA (esa_tc.py): 128 pixels (8 x 16 tiles for down and low; low's tile includes
        # its ring of one, so 6 x 14 outputs); no loop worth pipelining. out with a residual: 8
        # warps (at 4, IFADNet's took 255 registers and spilled 48-184 B on sm_80-90; without
        # one, 4 warps fit and issue 13% fewer instructions: RLFN's 47.5 per pixel against 54.5).
        wide = kernel == "esa_out_tc" and bool(sizes.get("has_res"))
        return LaunchConfig(block_p=128, num_warps=8 if wide else 4, num_stages=1)
    if kernel == "la_reduce_tc":
        # v2's LocalAttention reduction: 4 x 4 pooled pixels, the 1x1 at their 16 x 16 input
        # pixels (M = 256), one warpgroup
        return LaunchConfig(block_p=16, num_warps=4, num_stages=1)
    if kernel == "gate":
        # elementwise with four bilinear taps of att per pixel and channel: 64 pixels x <= 64
        # channels of float32 per program
        return LaunchConfig(block_p=64, num_warps=4, num_stages=1)
    if kernel == "esa_low":
        # float32: 64 pixels spilled 2.6 KB; 16 pixels on 4 warps took 255 registers (+8 B),
        # 32 pixels 48 registers (measured on sm_86).
        return LaunchConfig(block_p=32, num_warps=4, num_stages=1)
    return LaunchConfig(block_p=64, num_warps=4, num_stages=1)
