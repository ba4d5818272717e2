"""Traffic, work and time model of a fused model's launches against its eager reference (the
models are given: ``esr roofline``, in esr_models/cli/roofline.py, loads them). A model, not a
measurement; its float32 times are checked against the H200 measurements of 2026-11-28
(tests/kernels/test_roofline.py).

What is counted, per kernel launch (``Launch``):

- ``macs``: the *useful* multiply-accumulates, the reference network's for what the launch
  computes (a 1x1 once per pixel, real channel counts, no padding);
- ``executed_macs``: the MACs the Triton kernel really issues, from the launch's grid and
  constexprs as ``esr_kernels.gpu_check.record_launches`` records them for a GPU arch (90 here):
  every program's BLOCK_P pixels (the last program's masked tail included: masked lanes still
  run), output channels padded to CO_PAD / CP / CR, input channels rounded up to the K block
  (CI_BLOCK; la_reduce's CP), BSB's 1x1 recomputed at all 9 taps, la_reduce's at all 49 pool
  taps, esa_down's at its 9 strided taps (see ``_EXECUTED``);
- ``read`` / ``written``: DRAM bytes, each tensor once per launch. Assumption: halo re-reads
  and per-program weight re-fetches hit the 50-60 MB L2 (a 3x3 conv's programs in flight span a
  few image rows), so DRAM sees each tensor once;
- ``l2_read``: the bytes the programs request from L2: per program its input footprint (for a
  KxK conv of stride s over a run of L output pixels in one row: K rows of (L - 1) * s + K
  pixels; a block that wraps to the next row counts each row run separately; pool windows
  likewise) times the real input channels, plus *all* weights and bias vectors once per program
  (every program loads them), plus residuals, gates and outputs once. Re-reads within one
  program (the 9 taps over the same rows) are assumed served by L1.
- ``issued``: the warp-instructions the launch issues, read from each kernel compiled for sm_90
  (``sass_profiles``: ``triton.compile`` as ``esr gpu-check`` does, ``cuobjdump -sass``, cached
  beside gpu-check's compiles): straight-line code once per warp, each loop body (a backward
  branch) times its trip count from the source (``_loop_trips``), times warps and programs.
  The FFMAs counted this way agree with the executed MACs within 6% in float32 (a test checks
  it), which checks both counts.

How launches are found: the model runs under ``FakeTensorMode`` (no memory, no arithmetic:
540x960 costs nothing) inside a ``TorchDispatchMode`` that sees every op:

- fused model (``backend="triton"``): each ``torch.ops.esr.*`` call is one Triton launch,
  except ``esr::esa``, which is three (``triton/esa.py``: down, low, out); any aten op the fused
  model still makes counts as in eager (the concatenation under the v2 conv, which
  concatenates for its tensor-core conv: executed = useful = 0 MACs; v1's ``esr::concat_conv``
  reads the features in place);
- eager reference: every aten op reads its tensor inputs and writes its outputs; views and
  allocations (``empty*``) move nothing; convolutions' MACs are N*C_out*H_out*W_out*C_in/g*k*k.

The executed counts and L2 bytes come from a second pass, ``record_launches`` on a real CPU
input of the same shape (nothing is computed: the launches are only recorded), matched to the
esr:: launches in order (``attach_executed``).

Modelled time of a launch on a device (``launch_seconds``):

    max(DRAM bytes / HBM bandwidth, L2 bytes / L2 bandwidth, compute) + a per-launch overhead

    compute = issued warp-instructions / (SMs * 4 issue slots * clock * ISSUE_FRACTION)
              on sm_90 devices when the SASS is known; otherwise
              2 * executed MACs / (matrix peak of the dtype's path * ISSUE_EFFICIENCY)

- ISSUE_FRACTION = 1/2: the kernels fill about half the SMs' issue slots (8-16 resident warps
  per SM, ``num_stages=1``: each K step waits for its loads). It is issue 28's calibration
  ("executed FMAs at half the float32 rate" reproduced IFADNet and RLFN) restated per
  instruction: the 32-pixel float32 conv's K loop issues ~1.29 instructions per FFMA, and
  1.29 / 32 lanes * 25.45e12 FFMA/s = 0.49 of the H200's 1.04e12 issue slots/s. One number for
  every kernel, dtype and model, not fitted to the measurements it is checked against (the
  float32 H200 times come out 1.11-1.13x the measured ones, every model, both sizes). What
  the issue count adds over the MAC count: 16-pixel tiles issue ~1.65 instructions per FFMA,
  the gated convs ~2, la_reduce 2.2, ESA's kernels 2.2-3.5, and the straight-line prologues
  and epilogues;
- fallback (no SASS, or the RTX 3090, whose sm_86 code is not what was read): float32 IEEE
  dots on the FMA units at ISSUE_EFFICIENCY 1/2 of the float32 matrix rate (issue 28's rule);
  TF32 dots (float32 under PyTorch's default flags, ``dot_path``) at half the dense fp16 peak;
  float16/bfloat16 on tensor cores at the dense peak;
- the model time is the sum over launches (one stream, no overlap between launches); the
  per-launch overhead (``launch_overhead_s``) is the GPU-side gap between back-to-back kernels
  (a few µs), not the host's dispatch time, which overlaps with the GPU's work once the GPU is
  the bottleneck. Occupancy, waves and cache misses beyond the above are not modelled.

Devices (``DEVICES``): the H200 uses the ceilings *measured* on the lent H200 on 2026-11-28
(benchmarks/results/gpu-session-h200-2026-11-28.json, env step: device-to-device copy
4292 GB/s, float32 matrix product 50.9 TFLOP/s, bf16 790 TFLOP/s); the others, vendor
datasheets; the H200's 132 SMs at 1965 MHz under load were read there too (nvidia-smi). L2
bandwidths are not measured in this repository: third-party microbenchmark figures, approximate.
"""
from __future__ import annotations

import math
import os
import re
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from unittest import mock

from .spec import pooled_size

if TYPE_CHECKING:
    from .op_args import ConvGeometry

# bandwidth / l2_bandwidth: bytes/s; fp32_flops: float32 FMA-unit matrix rate; fp16_flops: dense
# fp16/bf16 tensor-core rate (FLOP/s, 2 per MAC); launch_overhead_s: per launch, GPU side.
# arch, sms, clock_hz: the SASS issue model applies where arch is RECORD_ARCH (sm_90's code).
DEVICES = {
    "H200 (measured)": {"bandwidth": 4.292e12, "l2_bandwidth": 5.5e12, "fp32_flops": 50.9e12,
                        "fp16_flops": 790e12, "launch_overhead_s": 3e-6, "arch": 90, "sms": 132,
                        "clock_hz": 1.965e9},
    "H100 SXM": {"bandwidth": 3.35e12, "l2_bandwidth": 5.5e12, "fp32_flops": 67e12, "fp16_flops": 989e12,
                 "launch_overhead_s": 3e-6, "arch": 90, "sms": 132, "clock_hz": 1.98e9},
    "RTX 3090": {"bandwidth": 936e9, "l2_bandwidth": 2.0e12, "fp32_flops": 35.6e12, "fp16_flops": 71e12,
                 "launch_overhead_s": 3e-6, "arch": 86, "sms": 82, "clock_hz": 1.695e9},
}
# Fraction of the SMs' issue slots (4 warp-instructions per SM per clock) the kernels fill:
# issue 28's "half", per instruction (see the module docstring).
ISSUE_FRACTION = 0.5
# Issue efficiency of the dots per dtype path (see the module docstring): IEEE float32 dots on
# the FMA units issue about one FFMA per two instructions; tensor-core dots are taken at peak.
ISSUE_EFFICIENCY = {"float32": 0.5, "tf32": 1.0, "float16": 1.0, "bfloat16": 1.0}


def _peak(device: dict, path: str) -> float:
    """The matrix rate of a dot path: float32 (IEEE) on the FMA units, TF32 on the tensor cores
    at half their dense fp16 rate (A100, H100/H200), fp16/bf16 at the dense rate."""
    if path == "float32":
        return device["fp32_flops"]
    return device["fp16_flops"] / 2 if path == "tf32" else device["fp16_flops"]


def dot_path(dtype_name: str) -> str:
    """The dot path a model of ``dtype_name`` runs now: float32 is "tf32" when PyTorch lets
    convolutions use TF32 (the kernels follow that flag), else "float32" (IEEE)."""
    if dtype_name != "float32":
        return dtype_name
    from .triton.common import conv_tf32_allowed

    return "tf32" if conv_tf32_allowed() else "float32"
RECORD_ARCH = 90  # the launch configurations of sm_90 (the lent H200)
TARGET_RATIO = 1 / 3  # issue #10: fused traffic at most a third of eager's
_ALLOC_PREFIXES = ("empty", "new_empty", "zeros_like", "full_like")
# Metadata queries that reach the dispatcher (``x.device`` in a forward): no kernel, no bytes.
_METADATA = ("device", "dim", "size", "stride", "numel", "sym_size", "sym_stride", "sym_numel", "is_contiguous")


@dataclass
class Launch:
    """One kernel launch: what it is, DRAM bytes read and written, useful MACs; with the
    executed MACs, L2 bytes and program count once ``attach_executed`` has matched it to a
    recorded Triton launch (0 before, and for aten ops)."""
    name: str
    read: int
    written: int
    macs: int = 0
    executed_macs: int = 0
    l2_read: int = 0
    programs: int = 0
    issued: int = 0  # warp-instructions, from the sm_90 SASS (0: not known)

    @property
    def bytes(self) -> int:
        return self.read + self.written

    @property
    def l2_bytes(self) -> int:
        """Bytes through L2: the programs' requests (``l2_read``, or the DRAM reads when no
        kernel was matched) and the writes."""
        return (self.l2_read or self.read) + self.written


def nbytes(t) -> int:
    """Bytes of the elements a tensor (or view) covers."""
    return t.numel() * t.element_size()


def _tensors(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _tensors(o)


def _unique_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            total += nbytes(t)
    return total


# ---------------------------------------------------------------- fused (esr::) launches
def conv_macs(x_shape, w_packed_shape, g: ConvGeometry) -> int:
    """Useful MACs of esr::conv: every output pixel, c_conv channels, over the packed weight's C_in."""
    n, _, h, w = x_shape
    c_in = w_packed_shape[1]
    ho, wo = (h + 2 * g.padding - g.ksize) // g.stride + 1, (w + 2 * g.padding - g.ksize) // g.stride + 1
    return n * ho * wo * g.c_conv * c_in * g.ksize * g.ksize


def esr_launches(op: str, args: tuple, out) -> list[Launch]:
    """The launches of one torch.ops.esr call with their DRAM bytes and useful MACs (see the
    module docstring; executed MACs come later, from ``attach_executed``)."""
    import torch

    from .op_args import CONV, ESA

    read_all = _unique_bytes(_tensors(args))
    if op == "concat_conv":  # useful: the reference's 1x1 over the k C_f concatenated channels
        feats, w_packed, c_out = args[0], args[1], args[3]
        n, _, h, w = feats[0].shape
        return [Launch("esr::concat_conv", read_all, nbytes(out), n * h * w * c_out * w_packed.shape[1])]
    x = args[0]
    n, c, h, w = x.shape
    if op == "conv":
        _, wp, _, geometry, _ = CONV.split(args)
        return [Launch("esr::conv", read_all, nbytes(out), conv_macs(x.shape, wp.shape, geometry))]
    if op == "bsb":
        from .triton.configs import conv_choice

        if conv_choice() == "v2":  # the pointwise conv once, its output stored, then the depthwise kernel
            x, pw, dw, b, res = args
            inter = n * h * w * (-(-c // 8) * 8) * x.element_size()  # padded channels-last, x's dtype
            rest = _unique_bytes([t for t in (dw, b, res) if t is not None])
            return [Launch("esr::bsb/pw", _unique_bytes([x, pw]), inter, n * h * w * c * c),
                    Launch("esr::bsb/dw", inter + rest, nbytes(out), n * h * w * 9 * c)]
        return [Launch("esr::bsb", read_all, nbytes(out), n * h * w * (c * c + 9 * c))]
    if op == "gate":  # elementwise: no MACs (the bilinear taps read the small att map)
        return [Launch("esr::gate", read_all, nbytes(out), 0)]
    if op == "la_reduce":
        # useful: the reference's 1x1 reduction once per full-resolution pixel (pooling: no MACs)
        return [Launch("esr::la_reduce", read_all, nbytes(out), n * h * w * c * args[2].shape[0])]
    if op == "esa":
        x, e, residual = ESA.split(args)
        cr = e.reduce_w.shape[-1]  # the packed width: esr::esa allocates d and low with it (16 here)
        h2, w2 = (h - 3) // 2 + 1, (w - 3) // 2 + 1
        hp, wp_ = pooled_size(h2), pooled_size(w2)
        f32 = torch.finfo(torch.float32).bits // 8
        d_bytes, low_bytes = n * cr * h2 * w2 * f32, n * cr * hp * wp_ * f32
        # useful: the reduction 1x1 once per full-resolution pixel, then the strided 3x3
        down = Launch("esr::esa/down", _unique_bytes([x, e.reduce_w, e.reduce_b, e.down_w, e.down_b]), d_bytes,
                      n * h * w * c * cr + n * h2 * w2 * 9 * cr * cr)
        low = Launch("esr::esa/low", d_bytes + _unique_bytes([e.low_w, e.low_b]), low_bytes,
                     n * hp * wp_ * 9 * cr * cr)
        tail_in = [x, e.skip_w, e.skip_b, e.expand_w, e.expand_b] + ([residual] if residual is not None else [])
        tail = Launch("esr::esa/out", _unique_bytes(tail_in) + low_bytes, nbytes(out), n * h * w * 2 * c * cr)
        return [down, low, tail]
    raise KeyError(f"esr::{op}: no traffic rule")


# ---------------------------------------------------------------- executed work (recorded launches)
_KERNEL_OF = {"esr::conv": ("_conv_kernel", "_conv_tc_kernel"), "esr::concat_conv": "_concat_conv_kernel",
              "esr::bsb": "_bsb_kernel",
              "esr::bsb/pw": ("_conv_kernel", "_conv_tc_kernel"), "esr::bsb/dw": "_bsb_dw_kernel",
              "esr::la_reduce": ("_la_reduce_kernel", "_la_reduce_tc_kernel"),
              "esr::esa/down": ("_esa_down_kernel", "_esa_down_tc_kernel"),
              "esr::esa/low": ("_esa_low_kernel", "_esa_low_tc_kernel"),
              "esr::esa/out": ("_esa_out_kernel", "_esa_out_tc_kernel"), "esr::gate": "_gate_kernel"}
_ELEM = {"float32": 4, "float16": 2, "bfloat16": 2}


def _ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


def _tbytes(t) -> int:
    """Bytes of a recorded TensorArg (its whole shape)."""
    return math.prod(t.shape) * _ELEM.get(t.dtype, 4)


def footprint_pixels(total: int, width: int, block_p: int, ksize: int, stride: int) -> int:
    """Input pixels all programs of one image request: program i owns flattened output pixels
    [i * block_p, (i + 1) * block_p) of ``total`` (``width`` per row); each run of L of them in
    one output row reads ksize rows of (L - 1) * stride + ksize input pixels (image borders and
    the masked tail fetch nothing: ignored at the borders, excluded for the tail)."""
    def run(n: int) -> int:
        return ksize * ((n - 1) * stride + ksize)

    out = 0
    for p0 in range(0, total, block_p):
        p1 = min(p0 + block_p, total) - 1
        r0, r1 = p0 // width, p1 // width
        if r0 == r1:
            out += run(p1 - p0 + 1)
        else:  # the block wraps: the end of row r0, full rows between, the start of row r1
            out += run(width - p0 % width) + (r1 - r0 - 1) * run(width) + run(p1 % width + 1)
    return out


def _conv_executed(k) -> tuple[int, int, list[str]]:
    """(executed MACs, input-footprint bytes, per-program weight tensors) of _conv_kernel:
    every program runs BLOCK_P pixels x KSIZE^2 taps x C_in rounded up to CI_BLOCK x CO_PAD."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs, taps = k.grid[0] * k.grid[1], c["KSIZE"] ** 2
    macs = programs * c["BLOCK_P"] * taps * _ceil_to(s["C_in"], c["CI_BLOCK"]) * c["CO_PAD"]
    px = footprint_pixels(s["H_out"] * s["W_out"], s["W_out"], c["BLOCK_P"], c["KSIZE"], c["STRIDE"])
    e = _ELEM[x.dtype]
    # channels >= C_in of x (partial convs' passthrough) are read at the centre pixel only
    fp = k.grid[1] * (px * s["C_in"] + (x.shape[1] - s["C_in"]) * s["H_out"] * s["W_out"]) * e
    weights = ["w_ptr", "b_ptr"] + (["shift_ptr"] if c["HAS_SHIFT"] else [])
    return macs, fp, weights


def _concat_conv_executed(k) -> tuple[int, int, list[str]]:
    """_concat_conv_kernel: every program runs BLOCK_P pixels x N_FEAT features x C_f rounded up
    to CI_BLOCK x CO_PAD; a 1x1 reads each feature's pixels once."""
    c, s, f = k.constexprs, k.scalars, k.tensors["f0_ptr"]
    programs = k.grid[0] * k.grid[1]
    macs = programs * c["BLOCK_P"] * c["N_FEAT"] * _ceil_to(s["C_f"], c["CI_BLOCK"]) * c["CO_PAD"]
    return macs, c["N_FEAT"] * _tbytes(f), ["w_ptr", "b_ptr"]


def _halo_extent(out_len: int, tile: int, ksize: int, stride: int, pad: int, in_len: int) -> int:
    """Input rows (or columns) all tiles along one axis read: each tile of ``tile`` outputs
    reads (tile - 1) * stride + ksize inputs, clipped to the image (padding fetches nothing)."""
    total = 0
    for o0 in range(0, out_len, tile):
        lo = o0 * stride - pad
        hi = (min(o0 + tile, out_len) - 1) * stride - pad + ksize
        total += max(0, min(hi, in_len) - max(lo, 0))
    return total


def _conv_tc_executed(k) -> tuple[int, int, list[str]]:
    """_conv_tc_kernel (v2): every program runs TILE_H x TILE_W pixels x KSIZE^2 taps x C_in
    rounded up to CI_BLOCK (or K_A + K_B per tap: ``conv_tc.tap_parts``) x (CO_A + CO_B); it
    reads its tile's halo of the input."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs, taps = k.grid[0] * k.grid[1], c["KSIZE"] ** 2
    k_tap = c["K_A"] + c["K_B"] if c.get("K_A") else _ceil_to(c["C_in"], c["CI_BLOCK"])
    macs = programs * c["TILE_H"] * c["TILE_W"] * taps * k_tap * (c["CO_A"] + c["CO_B"])
    rows = _halo_extent(s["H_out"], c["TILE_H"], c["KSIZE"], c["STRIDE"], c["PAD"], s["H"])
    cols = _halo_extent(s["W_out"], c["TILE_W"], c["KSIZE"], c["STRIDE"], c["PAD"], s["W"])
    e = _ELEM[x.dtype]
    fp = k.grid[1] * (rows * cols * c["C_in"] + (x.shape[1] - c["C_in"]) * s["H_out"] * s["W_out"]) * e
    return macs, fp, ["w_ptr", "b_ptr"] + (["shift_ptr"] if c["HAS_SHIFT"] else [])


def _bsb_executed(k) -> tuple[int, int, list[str]]:
    """_bsb_kernel: at each of the 9 taps the 1x1 (C rounded up to CI_BLOCK x CO_PAD) again,
    plus the depthwise product (CO_PAD)."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs = k.grid[0] * k.grid[1]
    macs = programs * c["BLOCK_P"] * 9 * (_ceil_to(s["C"], c["CI_BLOCK"]) * c["CO_PAD"] + c["CO_PAD"])
    fp = k.grid[1] * footprint_pixels(s["H"] * s["W"], s["W"], c["BLOCK_P"], 3, 1) * s["C"] * _ELEM[x.dtype]
    return macs, fp, ["pw_ptr", "dw_ptr", "b_ptr"]


def _bsb_dw_executed(k) -> tuple[int, int, list[str]]:
    """_bsb_dw_kernel (v2's depthwise half): TILE_H x TILE_W pixels x 9 taps x CP channels; it
    reads its tile's halo of the intermediate (reflected at the borders: no fewer pixels)."""
    c, s, t = k.constexprs, k.scalars, k.tensors["t_ptr"]
    programs = k.grid[0] * k.grid[1]
    macs = programs * c["TILE_H"] * c["TILE_W"] * 9 * c["CP"]
    rows = _halo_extent(s["H"], c["TILE_H"], 3, 1, 1, s["H"])
    cols = _halo_extent(s["W"], c["TILE_W"], 3, 1, 1, s["W"])
    return macs, k.grid[1] * rows * cols * c["C"] * _ELEM[t.dtype], ["dw_ptr", "b_ptr"]


def _la_reduce_executed(k) -> tuple[int, int, list[str]]:
    """_la_reduce_kernel: per pooled pixel, the 1x1 (CP x CR, C padded to CP) at all POOL_K^2
    window positions (the windows overlap: stride POOL_S < POOL_K)."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs = k.grid[0] * k.grid[1]
    macs = programs * c["BLOCK_P"] * c["POOL_K"] ** 2 * c["CP"] * c["CR"]
    px = footprint_pixels(s["Hp"] * s["Wp"], s["Wp"], c["BLOCK_P"], c["POOL_K"], c["POOL_S"])
    return macs, k.grid[1] * px * s["C"] * _ELEM[x.dtype], ["wr_ptr", "br_ptr"]


def _la_reduce_tc_executed(k) -> tuple[int, int, list[str]]:
    """_la_reduce_tc_kernel (v2): per TP_H x TP_W pooled tile, the 1x1 (CA + CB x CR) once at
    each of its IN_H x IN_W input pixels (those past the image read nothing); the program's
    scratch block goes to L2 and comes back once (as an input footprint counts each pixel once
    per program: a program's repeated reads of a line are taken as L1 hits)."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs, tile = k.grid[0] * k.grid[1], c["IN_H"] * c["IN_W"]
    macs = programs * tile * (c["CA"] + c["CB"]) * c["CR"]
    rows = sum(min(c["IN_H"], s["H"] - t * c["POOL_S"]) for t in range(0, s["Hp"], c["TP_H"]))
    cols = sum(min(c["IN_W"], s["W"] - t * c["POOL_S"]) for t in range(0, s["Wp"], c["TP_W"]))
    scratch = 2 * programs * tile * c["CR"] * 4  # written, then read back (the windows' overlaps: L1)
    return macs, k.grid[1] * rows * cols * c["C"] * _ELEM[x.dtype] + scratch, ["wr_ptr", "br_ptr"]


def _esa_down_executed(k) -> tuple[int, int, list[str]]:
    """_esa_down_kernel: per half-resolution pixel and each of 9 taps, the reduction 1x1
    (C rounded up to CI_BLOCK x CR) again, then the tap's CR x CR."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs, cr = k.grid[0] * k.grid[1], c["CR"]
    macs = programs * c["BLOCK_P"] * 9 * (_ceil_to(s["C"], c["CI_BLOCK"]) * cr + cr * cr)
    px = footprint_pixels(s["H2"] * s["W2"], s["W2"], c["BLOCK_P"], 3, 2)
    return macs, k.grid[1] * px * s["C"] * _ELEM[x.dtype], ["wr_ptr", "br_ptr", "wd_ptr", "bd_ptr"]


def _esa_low_executed(k) -> tuple[int, int, list[str]]:
    """_esa_low_kernel: 9 taps of CR x CR per low-resolution pixel; each tap max-pools a
    POOL_K window of d (float32), so a pixel reads a (2 * POOL_S + POOL_K)-wide window."""
    c, s = k.constexprs, k.scalars
    programs, cr = k.grid[0] * k.grid[1], c["CR"]
    macs = programs * c["BLOCK_P"] * 9 * cr * cr
    px = footprint_pixels(s["Hp"] * s["Wp"], s["Wp"], c["BLOCK_P"], 2 * c["POOL_S"] + c["POOL_K"], c["POOL_S"])
    return macs, k.grid[1] * px * cr * _ELEM[k.tensors["d_ptr"].dtype], ["wl_ptr", "bl_ptr"]


def _esa_out_executed(k) -> tuple[int, int, list[str]]:
    """_esa_out_kernel: the folded skip (CP x CR) and the expansion (CR x CP) per pixel; x is
    read once (a 1x1: no halo)."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs = k.grid[0] * k.grid[1]
    macs = programs * c["BLOCK_P"] * 2 * c["CP"] * c["CR"]
    return macs, _tbytes(x), ["wsr_ptr", "bsr_ptr", "we_ptr", "be_ptr"]


def _esa_down_tc_executed(k) -> tuple[int, int, list[str]]:
    """_esa_down_tc_kernel (v2): per half-resolution pixel of its TILE_H x TILE_W tiles and each
    of 9 taps, the reduction 1x1 (CA + CB x CR) again, then the tap's CR x CR; each tile reads
    its stride-2 halo of x."""
    c, s, x = k.constexprs, k.scalars, k.tensors["x_ptr"]
    programs, cr = k.grid[0] * k.grid[1], c["CR"]
    macs = programs * c["TILE_H"] * c["TILE_W"] * 9 * ((c["CA"] + c["CB"]) * cr + cr * cr)
    h, w = x.shape[2], x.shape[3]
    rows = _halo_extent(s["H2"], c["TILE_H"], 3, 2, 0, h)
    cols = _halo_extent(s["W2"], c["TILE_W"], 3, 2, 0, w)
    return macs, k.grid[1] * rows * cols * c["C"] * _ELEM[x.dtype], ["wr_ptr", "br_ptr", "wd_ptr", "bd_ptr"]


def _esa_low_tc_executed(k) -> tuple[int, int, list[str]]:
    """_esa_low_tc_kernel (v2): 9 taps of CR x CR at every pixel of its HALO_H x HALO_W tiles
    (the ring included); each tile pools its pixels once, reading their windows of d, and its
    scratch block goes to L2 and comes back once (the taps' repeated reads: L1, as for inputs)."""
    c, s = k.constexprs, k.scalars
    programs, cr, tile = k.grid[0] * k.grid[1], c["CR"], c["HALO_H"] * c["HALO_W"]
    macs = programs * tile * 9 * cr * cr
    h2, w2 = k.tensors["d_ptr"].shape[2:]
    rows = _halo_extent(s["Hp"], c["HALO_H"] - 2, c["POOL_K"] + 2 * c["POOL_S"], c["POOL_S"], c["POOL_S"], h2)
    cols = _halo_extent(s["Wp"], c["HALO_W"] - 2, c["POOL_K"] + 2 * c["POOL_S"], c["POOL_S"], c["POOL_S"], w2)
    scratch = 2 * programs * tile * cr * 4  # written, then read back (its 9 taps' repeats: L1)
    return macs, k.grid[1] * rows * cols * cr * _ELEM[k.tensors["d_ptr"].dtype] + scratch, ["wl_ptr", "bl_ptr"]


def _esa_out_tc_executed(k) -> tuple[int, int, list[str]]:
    """_esa_out_tc_kernel (v2): the folded skip (CA + CB x CR) and the expansion (CR x CA + CB)
    per pixel; x is read once (a 1x1: no halo)."""
    c, x = k.constexprs, k.tensors["x_ptr"]
    programs = k.grid[0] * k.grid[1]
    macs = programs * c["BLOCK_P"] * 2 * (c["CA"] + c["CB"]) * c["CR"]
    return macs, _tbytes(x), ["wsr_ptr", "bsr_ptr", "we_ptr", "be_ptr"]


def _gate_executed(k) -> tuple[int, int, list[str]]:
    """_gate_kernel: no MACs; x read once (no halo); att, a small low-resolution map, is one of
    the launch's other inputs, counted once (as v1's gated conv counts it)."""
    return 0, _tbytes(k.tensors["x_ptr"]), []


_EXECUTED = {"_conv_kernel": _conv_executed, "_concat_conv_kernel": _concat_conv_executed,
             "_conv_tc_kernel": _conv_tc_executed, "_bsb_dw_kernel": _bsb_dw_executed, "_bsb_kernel": _bsb_executed,
             "_la_reduce_kernel": _la_reduce_executed, "_esa_down_kernel": _esa_down_executed,
             "_esa_low_kernel": _esa_low_executed, "_esa_out_kernel": _esa_out_executed, "_gate_kernel": _gate_executed,
             "_esa_down_tc_kernel": _esa_down_tc_executed, "_esa_low_tc_kernel": _esa_low_tc_executed,
             "_esa_out_tc_kernel": _esa_out_tc_executed, "_la_reduce_tc_kernel": _la_reduce_tc_executed}


def executed_work(k) -> tuple[int, int, int, int]:
    """(executed MACs, L2 read bytes, programs, bytes of input + weights once) of one recorded
    Triton launch ``k``
    (``gpu_check.Launch``). L2 bytes: the input footprint, plus the weight tensors once per
    program, plus the launch's other inputs once (outputs are counted by the caller)."""
    macs, footprint, weight_args = _EXECUTED[k.kernel](k)
    programs = k.grid[0] * k.grid[1]
    in_key = {"_esa_low_kernel": "d_ptr", "_esa_low_tc_kernel": "d_ptr", "_bsb_dw_kernel": "t_ptr",
              "_concat_conv_kernel": "f0_ptr"}.get(k.kernel, "x_ptr")
    inputs = k.constexprs.get("N_FEAT", 1) * _tbytes(k.tensors[in_key])  # concat_conv: its k features
    weights = sum(_tbytes(k.tensors[a]) for a in weight_args)
    return macs, footprint + programs * weights, programs, inputs + weights


def attach_executed(launches: list[Launch], recorded, profiles=None) -> None:
    """Fill ``executed_macs``, ``l2_read`` and ``programs`` of the esr:: ``launches`` (in
    order) from the Triton launches ``recorded`` of the same forward, which must correspond one
    to one (``record_launches`` on the same model and input shape); and ``issued`` from their
    SASS ``profiles`` (``sass_profiles``) when given."""
    ours = [l for l in launches if l.name in _KERNEL_OF]
    names = [_KERNEL_OF[l.name] for l in ours]
    if len(names) != len(recorded) or any(k.kernel not in ((n,) if isinstance(n, str) else n)
                                          for n, k in zip(names, recorded)):
        raise ValueError(f"roofline launches {names} do not match the recorded Triton launches "
                         f"{[k.kernel for k in recorded]}")
    for l, k in zip(ours, recorded):
        macs, requested, programs, once = executed_work(k)
        l.executed_macs, l.programs = macs, programs
        # the DRAM reads minus the input and weights counted once, plus what the programs request
        l.l2_read = l.read - once + requested
    for l, k, prof in zip(ours, recorded, profiles or [None] * len(ours)):
        if prof is not None:
            l.issued = issued_per_warp(k, prof)[0] * k.num_warps * l.programs


def record_executed(model, x_shape, dtype, arch: int = RECORD_ARCH) -> list:
    """The Triton launches of a fused model on a (real, CPU) input of ``x_shape`` and
    ``dtype`` with the launch configurations of GPU ``arch``; nothing is computed (see
    ``esr_kernels.gpu_check.record_launches``; needs Triton's interpreter)."""
    import torch

    from .gpu_check import record_launches

    return record_launches(model, torch.zeros(x_shape, dtype=dtype), arch)


# ---------------------------------------------------------------- issued instructions (sm_90 SASS)
# The warp-instructions a program issues, read from the kernel compiled for the recorded arch:
# straight-line code once, each loop body times its trip count. Loops are the backward branches
# of the SASS; their trip counts come from the kernel's source (``_loop_trips``).
_SASS_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")


def sass_loops(sass: str) -> dict:
    """{"total": instructions, "ffma": FFMAs, "mma": tensor-core MMAs (HGMMA, sm_90's warpgroup
    MMA, or HMMA, mma.sync), "loops": [[start, end, instructions, FFMAs], ...]} of one kernel's
    SASS (``cuobjdump -sass``); a loop is the range from a backward branch's target to the branch."""
    ins = [(int(a, 16), op, rest) for a, op, rest in _SASS_LINE.findall(sass)]
    loops = []
    for addr, op, rest in ins:
        target = re.search(r"0x([0-9a-f]+)", rest) if op.startswith("BRA") else None
        if target and int(target.group(1), 16) < addr:
            start = int(target.group(1), 16)
            body = [o for a, o, _ in ins if start <= a <= addr]
            loops.append([start, addr, len(body), sum(o.startswith("FFMA") for o in body)])
    return {"total": len(ins), "ffma": sum(o.startswith("FFMA") for _, o, _ in ins),
            "mma": sum(o.startswith(("HGMMA", "HMMA")) for _, o, _ in ins), "loops": loops}


def _loop_trips(k) -> tuple:
    """(trips of each outermost loop, or a tuple of them per outermost loop in code order;
    trips of a loop nested in one) of recorded launch ``k``,
    from the kernels' sources: conv/BSB loop over K blocks per (unrolled) tap, conv v2 over taps x
    K blocks in one loop; la_reduce over the
    pool window; esa_down over 9 taps, then K blocks; esa_low over 9 taps, then the pool window."""
    c, s = k.constexprs, k.scalars
    # concat_conv: C_f per feature (the features are unrolled, each loop an outer one)
    k_blocks = -(-s.get("C_in", c.get("C_in", s.get("C", s.get("C_f", 0)))) // c["CI_BLOCK"]) if "CI_BLOCK" in c else 0
    pool = c.get("POOL_K", 0) ** 2
    taps = c.get("KSIZE", 0) ** 2
    # conv v2 with K_A > 0 (``conv_tc.tap_parts``): one step per tap, its parts unrolled
    tc_steps = taps if c.get("K_A") else taps * k_blocks
    return {"_conv_kernel": (k_blocks, 0), "_conv_tc_kernel": (tc_steps, 0), "_bsb_dw_kernel": (9, 0),
            "_concat_conv_kernel": (k_blocks, 0),
            "_bsb_kernel": (k_blocks, 0), "_la_reduce_kernel": (pool, 0),
            "_esa_down_kernel": (9, k_blocks), "_esa_low_kernel": (9, pool),
            "_esa_out_kernel": (0, 0), "_gate_kernel": (0, 0),
            # v2's ESA: down's taps (K parts unrolled); low's pool window (its 9 taps unrolled)
            "_esa_down_tc_kernel": (9, 0), "_esa_low_tc_kernel": (pool, 0),
            "_esa_out_tc_kernel": (0, 0), "_la_reduce_tc_kernel": (c.get("POOL_K", 0), 0)}[k.kernel]


def _path_variants(k) -> list:
    """The launches compiled instead of ``k`` for its issue count when its kernel takes one of
    two paths per program: v2's conv, edge tiles (per-pixel masks) and interior tiles."""
    if k.kernel != "_conv_tc_kernel":
        return []
    from .triton.conv_tc import PATHS_EDGE, PATHS_INTERIOR

    return [replace(k, constexprs=k.constexprs | {"PATHS": p}) for p in (PATHS_EDGE, PATHS_INTERIOR)]


def _interior_share(k) -> float:
    """The share of launch ``k``'s programs that take the interior path (``_path_variants``)."""
    from .triton.conv_tc import interior_fraction

    c, s = k.constexprs, k.scalars
    return interior_fraction(s["H"], s["W"], s["H_out"], s["W_out"], c["TILE_H"], c["TILE_W"], c["KSIZE"],
                             c["STRIDE"], c["PAD"])


def issued_per_warp(k, prof: dict) -> tuple[int, int]:
    """(warp-instructions, FFMAs) one warp of a program of launch ``k`` issues, from its SASS
    profile ``prof`` (``sass_loops``) and the loops' trip counts; for a kernel with two paths
    (``prof["paths"]``: each compiled alone), the mean over its programs."""
    if "paths" in prof:
        f = _interior_share(k)
        (ei, ef), (ii, i_f) = (_issued_one(k, p) for p in prof["paths"])
        return round((1 - f) * ei + f * ii), round((1 - f) * ef + f * i_f)
    return _issued_one(k, prof)


def _issued_one(k, prof: dict) -> tuple[int, int]:
    """``issued_per_warp`` of a kernel compiled with one path."""
    outer_trips, inner_trips = _loop_trips(k)
    loops = prof["loops"]

    def inside(a, b):  # loop a nested in loop b (address ranges)
        return a is not b and b[0] <= a[0] and a[1] <= b[1]

    # static counts hold every body once: add the outer bodies' other trips, the nested ones'
    outer = sorted((l for l in loops if not any(inside(l, o) for o in loops)), key=lambda l: l[0])
    per_loop = outer_trips if isinstance(outer_trips, tuple) else (outer_trips,) * len(outer)
    if len(per_loop) != len(outer):
        raise ValueError(f"{k.kernel}: {len(outer)} outermost loops in the SASS, trip counts for {len(per_loop)}")
    instr, ffma = prof["total"], prof["ffma"]
    for o, trips in zip(outer, per_loop):
        nested = [l for l in loops if inside(l, o)]
        own_i, own_f = o[2] - sum(n[2] for n in nested), o[3] - sum(n[3] for n in nested)
        instr += own_i * (trips - 1) - sum(n[2] for n in nested)
        ffma += own_f * (trips - 1) - sum(n[3] for n in nested)
        instr += sum(n[2] for n in nested) * trips * inner_trips
        ffma += sum(n[3] for n in nested) * trips * inner_trips
    return instr, ffma


def _compile_sass(job: dict) -> str:
    """SASS of one recorded launch (``job``: its fields, ``arch``), compiled as ``esr gpu-check``
    compiles it. Runs in a worker process without TRITON_INTERPRET."""
    import importlib
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    from .gpu_check import TensorArg, _fake_arg, _tool

    kernel = getattr(importlib.import_module(job["module"]), job["kernel"])
    target = GPUTarget("cuda", job["arch"], 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    args = [_fake_arg(TensorArg(**job["tensors"][n])) if n in job["tensors"]
            else job["scalars"][n] if n in job["scalars"] else job["constexprs"][n] for n in job["params"]]
    kwargs = {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    if job.get("maxnreg"):
        kwargs["maxnreg"] = job["maxnreg"]
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target, options=options.__dict__)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(compiled.asm["cubin"])
    try:
        return subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(f.name)


def _sass_job(job: dict) -> dict:
    """Worker: the cached or freshly compiled SASS profile of one job."""
    import json

    cache = Path(job["cache"])
    if cache.is_file():
        return json.loads(cache.read_text())
    prof = sass_loops(_compile_sass(job))
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(prof))
    tmp.replace(cache)
    return prof


def sass_profiles(recorded, arch: int = RECORD_ARCH, jobs: int = 2) -> list[dict | None]:
    """The SASS profile (``sass_loops``) of each recorded launch, compiled for ``arch`` in
    worker processes (cached with ``esr gpu-check``'s compiles, by kernel source, specialisation
    and Triton version); None for every launch when compiling is not possible here."""
    import hashlib
    import json
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import triton

    from . import gpu_check

    def key_of(k):
        return json.dumps({"spec": k.spec_key(), "arch": arch, "src": _kernel_hash(k), "triton": triton.__version__,
                           "profile": 2},  # 2: profiles count the tensor-core MMAs
                          sort_keys=True)

    keys = [key_of(k) for k in recorded]
    path_keys = [[key_of(v) for v in _path_variants(k)] for k in recorded]
    todo = {}
    for key, k in [*zip(keys, recorded), *((key_of(v), v) for k in recorded for v in _path_variants(k))]:
        if key not in todo:
            d = asdict(k) | {"tensors": {n: asdict(v) for n, v in k.tensors.items()}, "arch": arch}
            d["cache"] = str(gpu_check._cache_dir() / "sass" / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json")
            todo[key] = d
    saved = os.environ.pop("TRITON_INTERPRET", None)
    try:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            profiles = dict(zip(todo, pool.map(_sass_job, todo.values())))
    except Exception as exc:  # no ptxas/cuobjdump here, or a compile error: the FMA-rate model applies
        import warnings

        warnings.warn(f"esr roofline: no SASS for the issue model ({type(exc).__name__}: {exc}); "
                      "executed MACs at the FMA rate instead", stacklevel=2)
        return [None] * len(recorded)
    finally:
        if saved is not None:
            os.environ["TRITON_INTERPRET"] = saved
    return [profiles[key] | ({"paths": [profiles[p] for p in paths]} if paths else {})
            for key, paths in zip(keys, path_keys)]


def _kernel_hash(k) -> str:
    """A hash of the kernel's source file (its jit functions live beside it or in common.py)."""
    import hashlib
    import importlib

    mod = importlib.import_module(k.module)
    common = importlib.import_module("esr_kernels.triton.common")
    text = Path(mod.__file__).read_bytes() + Path(common.__file__).read_bytes()
    return hashlib.sha256(text).hexdigest()[:16]


# ---------------------------------------------------------------- aten launches
def aten_launch(func, args, kwargs, out) -> Launch | None:
    """One eager op's traffic; None for views and allocations (they move no data)."""
    schema = func._schema
    name = schema.name.split("::")[-1]
    if name.startswith(_ALLOC_PREFIXES) or name in ("detach", "lift_fresh", "alias") or name in _METADATA:
        return None
    rets = schema.returns
    if rets and all(r.alias_info is not None and not r.alias_info.is_write for r in rets):
        return None  # a view
    ins = list(_tensors(args)) + list(_tensors(list((kwargs or {}).values())))
    outs = list(_tensors(out))
    macs = 0
    if name in ("convolution", "_convolution", "conv2d"):
        weight, groups = args[1], (args[8] if len(args) > 8 else 1)
        o = outs[0]
        macs = o.numel() * (weight.shape[1]) * weight.shape[2] * weight.shape[3]
        del groups  # weight.shape[1] is already C_in / groups
    elif name in ("mm", "bmm", "addmm"):
        a, b = (args[1], args[2]) if name == "addmm" else (args[0], args[1])
        macs = a.numel() * b.shape[-1]
    return Launch(f"aten::{name}", _unique_bytes(ins), _unique_bytes(outs), int(macs))


# ---------------------------------------------------------------- tracing
@contextmanager
def _traced_forward():
    """Run a forward as a tracer would (``torch.compiler.is_compiling()``: no repack check, no
    CUDA graph) and without the models' input range check, as on the GPU being modelled: the
    check runs on CPU tensors only (esr_models.arch.layers), and here it would add its five
    small ops to every forward's launches (it is skipped while exporting: ``is_exporting``)."""
    import torch

    with mock.patch.object(torch.compiler, "is_compiling", lambda: True), \
            mock.patch.object(torch.compiler, "is_exporting", lambda: True):
        yield


def record(model, x_shape, dtype) -> list[Launch]:
    """The launches of ``model`` on a fake (N, 3, H, W) input of ``dtype`` (see module doc)."""
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    launches: list[Launch] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.namespace == "esr":
                launches.extend(esr_launches(func._schema.name.split("::")[-1], args, out))
            else:
                launch = aten_launch(func, args, kwargs, out)
                if launch is not None:
                    launches.append(launch)
            return out

    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.empty(x_shape, dtype=dtype)
        with _traced_forward(), torch.inference_mode(), Recorder():
            model(x)
    return launches


def launch_seconds(l: Launch, device: dict, dtype_name: str = "float16") -> float:
    """Modelled time of one launch (module docstring): the slowest of DRAM, L2 and the
    instruction issue (sm_90 devices, SASS known) or the executed MACs on the dtype's path, plus
    the device's per-launch overhead. A launch with no executed count (aten ops; everything
    before ``attach_executed``) is taken at its useful MACs and the path's full peak."""
    peak = _peak(device, dtype_name)
    if l.issued and device.get("arch") == RECORD_ARCH:
        compute = l.issued / (device["sms"] * 4 * device["clock_hz"] * ISSUE_FRACTION)
    elif l.executed_macs:
        compute = 2 * l.executed_macs / (peak * ISSUE_EFFICIENCY[dtype_name])
    else:
        compute = 2 * l.macs / peak
    memory = max(l.bytes / device["bandwidth"], l.l2_bytes / device.get("l2_bandwidth", math.inf))
    return max(memory, compute) + device.get("launch_overhead_s", 0.0)


def modelled_seconds(launches, device: dict, dtype_name: str = "float16") -> float:
    """A forward's modelled time: the sum of ``launch_seconds``."""
    return sum(launch_seconds(l, device, dtype_name) for l in launches)


def bound_seconds(launches, device: dict, dtype_name: str = "float16") -> float:
    """The traffic/MAC bound: Σ max(DRAM bytes / bandwidth, 2 useful MACs / peak), no overhead,
    no padding or recompute, no L2 (what the kernels could approach; issue 28's target)."""
    peak = _peak(device, dtype_name)
    return sum(max(l.bytes / device["bandwidth"], 2 * l.macs / peak) for l in launches)


def summarise(launches, dtype_name: str = "float16") -> dict:
    """Totals of a launch list and its times (ms) on every device of ``DEVICES``."""
    macs, executed = sum(l.macs for l in launches), sum(l.executed_macs for l in launches)
    return {"launches": len(launches), "read_bytes": sum(l.read for l in launches),
            "written_bytes": sum(l.written for l in launches), "bytes": sum(l.bytes for l in launches),
            "l2_bytes": sum(l.l2_bytes for l in launches), "macs": macs, "executed_macs": executed,
            "issued_warp_instructions": sum(l.issued for l in launches),
            "executed_over_useful": executed / macs if executed and macs else None,
            "bound_ms": {k: 1e3 * bound_seconds(launches, d, dtype_name) for k, d in DEVICES.items()},
            "modelled_ms": {k: 1e3 * modelled_seconds(launches, d, dtype_name) for k, d in DEVICES.items()}}


def model_report(name: str, fused, eager, size, dtype_name: str = "float16", sass: bool = True) -> dict:
    """Fused and eager launches of one model (``fused``: fused with backend "triton"; ``eager``:
    its reference) at (1, 3, *size), the fused ones with their executed work on sm_90's launch
    configurations and (``sass``) their issued instructions from the sm_90 SASS; the fused model
    is traced, so this process needs Triton's interpreter (``interpreter_usable``)."""
    import torch

    dtype = getattr(torch, dtype_name)
    shape = (1, 3, *size)
    fused_launches, eager_launches = record(fused, shape, dtype), record(eager, shape, dtype)
    recorded = record_executed(fused, shape, dtype)
    attach_executed(fused_launches, recorded, sass_profiles(recorded) if sass else None)
    path = dot_path(dtype_name)  # float32: TF32 or IEEE, as PyTorch's flag says now (fused and eager alike)
    f, e = summarise(fused_launches, path), summarise(eager_launches, path)
    pixels = size[0] * size[1]
    return {"model": name, "dtype": dtype_name, "input": list(shape),
            "output": [1, 3, 4 * size[0], 4 * size[1]], "fused": f, "eager": e,
            "issue_model": all(l.issued for l in fused_launches if l.programs),
            "launches_per_forward": f["launches"], "kernel_launches": sum(1 for l in fused_launches if l.programs),
            "useful_macs_per_pixel": f["macs"] / pixels, "executed_macs_per_pixel": f["executed_macs"] / pixels,
            "traffic_ratio": f["bytes"] / e["bytes"], "meets_one_third": f["bytes"] <= TARGET_RATIO * e["bytes"],
            "fused_launches": [asdict(l) for l in fused_launches]}


def interpreter_usable() -> bool:
    """A fused Triton model can be traced on CPU here: TRITON_INTERPRET=1 is set, or triton is
    not imported yet (then it is set now: it is read once, at triton's import)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    if "triton" in sys.modules:
        return False
    os.environ["TRITON_INTERPRET"] = "1"
    return True


def combine(model_reports: list[dict]) -> dict:
    """The whole report: what is modelled, the devices, the target, one entry per model and dtype."""
    return {"what": "a model, not a measurement. Per launch: DRAM bytes (each tensor once), L2 bytes (each "
                    "program's input footprint with its halo, all weights once per program), useful MACs, "
                    "executed MACs (sm_90 launch configurations: padding, K blocks, recomputation, masked "
                    "tails) and issued warp-instructions (sm_90 SASS loops x trip counts). modelled_ms = sum "
                    "over launches of max(DRAM bytes / bandwidth, L2 bytes / L2 bandwidth, issued / (SMs x 4 "
                    "x clock x issue_fraction), or without SASS 2 executed MACs / (peak x issue efficiency)) "
                    "+ launch overhead; bound_ms = sum of max(DRAM bytes / bandwidth, 2 useful MACs / peak). "
                    "See esr_kernels/roofline.py",
            "devices": DEVICES, "issue_fraction": ISSUE_FRACTION, "issue_efficiency": ISSUE_EFFICIENCY,
            "record_arch": RECORD_ARCH,
            "target_ratio": TARGET_RATIO, "models": model_reports}


def format_table(report: dict) -> str:
    """Markdown table for the README: traffic and work per model and dtype, modelled times."""
    devs = list(report["devices"])
    head = ["model", "dtype", "launches fused / eager", "MB fused (L2)", "MB eager", "fused / eager",
            "useful / executed kMAC per px", "executed / useful"]
    head += [f"{d} ms modelled [bound]" for d in devs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in report["models"]:
        f, e = m["fused"], m["eager"]
        row = [m["model"], m["dtype"], f"{f['launches']} / {e['launches']}",
               f"{f['bytes'] / 1e6:.0f} ({f['l2_bytes'] / 1e6:.0f})", f"{e['bytes'] / 1e6:.0f}",
               f"{m['traffic_ratio']:.2f}",
               f"{m['useful_macs_per_pixel'] / 1e3:.0f} / {m['executed_macs_per_pixel'] / 1e3:.0f}",
               f"{f['executed_over_useful']:.2f}"]
        row += [f"{f['modelled_ms'][d]:.2f} [{f['bound_ms'][d]:.2f}]" for d in devs]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
