"""How much memory a forward pass needs, and how much there is: for choosing a tile size
when the user gave none and a whole image would not fit."""
from __future__ import annotations

import os
from typing import Callable

import torch

from esr_kernels.errors import InvalidValueError

from ..arch.registry import ARCHITECTURES
from .tiling import carry_rows

# Peak bytes a float32 whole-image forward allocates per LR pixel (batch 1): each architecture
# record's ``peak_bytes_per_pixel`` (measured); this for any other model.
_DEFAULT_PEAK = 4000


def peak_bytes(model: torch.nn.Module, n: int, h: int, w: int, dtype: torch.dtype) -> int:
    """Estimated peak bytes of ``model`` on an (n, 3, h, w) input of ``dtype``."""
    per_pixel = next((a.peak_bytes_per_pixel for a in ARCHITECTURES if type(model) is a.cls), _DEFAULT_PEAK)
    scale = torch.empty((), dtype=dtype).element_size() / 4
    return int(per_pixel * scale * n * h * w)


def memory_cap_bytes() -> int | None:
    """``$ESR_MAX_MEMORY_MB`` in bytes (None when unset or empty); ValueError naming the
    variable when it is not a positive number of megabytes."""
    text = os.environ.get("ESR_MAX_MEMORY_MB", "").strip()
    if not text:
        return None
    try:
        mb = float(text)
    except ValueError:
        mb = float("nan")
    if not (mb > 0 and mb != float("inf")):
        raise InvalidValueError(f"environment variable ESR_MAX_MEMORY_MB={text!r}: expected a positive number of "
                                "megabytes (e.g. 2048), or leave it unset for no cap")
    return int(mb * 2**20)


def available_bytes(device: torch.device) -> int:
    """Memory a forward can use now: free GPU memory, or the host's available memory (the
    smaller of MemAvailable and this cgroup's remaining limit); never more than
    ``$ESR_MAX_MEMORY_MB`` when that is set (a cap for shared machines)."""
    cap_bytes = memory_cap_bytes()
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return min(int(free), cap_bytes) if cap_bytes is not None else int(free)
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
    except OSError:
        pass
    if avail is None:
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = 8 << 30
    limited = cgroup_available_bytes()
    if limited is not None:
        avail = min(avail, limited)
    if cap_bytes is not None:
        avail = min(avail, cap_bytes)
    return max(int(avail), 0)


CGROUP_ROOT = "/sys/fs/cgroup"
_NO_LIMIT = 1 << 60  # cgroup v1 writes "no limit" as a huge number (PAGE_COUNTER_MAX pages)


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        return int(text)
    except ValueError:
        return None


def _read_stat(path: str) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    out[parts[0]] = int(parts[1])
    except OSError:
        pass
    return out


def _own_cgroup_dirs(root: str, proc_self_cgroup: str, v1: bool) -> list[str]:
    """The folders of this process's cgroup and its ancestors up to ``root`` (innermost
    first; in a container the cgroup root is usually the container's own cgroup)."""
    rel = ""
    try:
        with open(proc_self_cgroup) as f:
            for line in f:
                hid, controllers, path = line.rstrip("\n").split(":", 2)
                if (v1 and "memory" in controllers.split(",")) or (not v1 and hid == "0" and controllers == ""):
                    rel = path.strip("/")
    except (OSError, ValueError):
        pass
    dirs, parts = [], [p for p in rel.split("/") if p]
    while True:
        d = os.path.join(root, *parts)
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)
        if not parts:
            break
        parts.pop()
    return dirs or [root]


def cgroup_available_bytes(root: str = CGROUP_ROOT, proc_self_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Memory this process's cgroup can still use: its limit minus its working set, the
    tightest over the cgroup and its ancestors; None where no limit is set. The working set
    leaves out page cache, which the kernel reclaims before it would kill anything (counting
    it tiled every image at 16-32 px after a run had read many files):

    * cgroup v2 (``memory.max``): ``memory.current`` minus ``file`` (page cache) plus ``shmem``
      (tmpfs, counted in ``file`` but not reclaimable) from ``memory.stat``; without
      ``memory.current``, ``anon`` + ``shmem`` + ``kernel``.
    * cgroup v1 (``memory/memory.limit_in_bytes``, or the files at ``root`` itself):
      ``memory.usage_in_bytes`` minus ``total_cache`` (or ``cache``) plus its ``shmem``.
    """
    best = None
    v2 = os.path.exists(os.path.join(root, "cgroup.controllers")) or os.path.exists(os.path.join(root, "memory.max"))
    if v2:
        for d in _own_cgroup_dirs(root, proc_self_cgroup, v1=False):
            limit = _read_int(os.path.join(d, "memory.max"))
            if limit is None:
                continue
            stat = _read_stat(os.path.join(d, "memory.stat"))
            current = _read_int(os.path.join(d, "memory.current"))
            shmem = stat.get("shmem", 0)
            if current is not None:
                used = current - stat.get("file", 0) + shmem
            else:
                used = stat.get("anon", 0) + shmem + stat.get("kernel", 0)
            free = limit - max(used, 0)
            best = free if best is None else min(best, free)
        return None if best is None else max(best, 0)
    v1_root = os.path.join(root, "memory")
    if not os.path.isdir(v1_root):
        v1_root = root
    for d in _own_cgroup_dirs(v1_root, proc_self_cgroup, v1=True):
        limit = _read_int(os.path.join(d, "memory.limit_in_bytes"))
        usage = _read_int(os.path.join(d, "memory.usage_in_bytes"))
        if limit is None or limit >= _NO_LIMIT or usage is None:
            continue
        stat = _read_stat(os.path.join(d, "memory.stat"))
        cache = stat.get("total_cache", stat.get("cache", 0))
        shmem = stat.get("total_shmem", stat.get("shmem", 0))
        free = limit - max(usage - cache + shmem, 0)
        best = free if best is None else min(best, free)
    return None if best is None else max(best, 0)


# Float32 tile-sized planes ``tiling.blend_tiles`` and the quantisation of its pieces hold at
# once, per output channel of the batch: the tile's output, piece * mask, the accumulator, the
# previous tile's accumulator (its shared columns), the blended piece handed on and one
# temporary of it (the grey mean, the quantised copy); and per tile, not per channel: the mask
# and the two weight accumulators.
_TILE_PLANES_PER_CHANNEL = 6
_TILE_PLANES = 3


def tiled_bytes(model: torch.nn.Module, n: int, h: int, w: int, dtype: torch.dtype, tile: int,
                overlap: int, scale: int, channels: int = 3) -> int:
    """Estimated peak bytes of a tiled run over an (n, channels, h, w) input with square ``tile``
    tiles, on top of its input and its assembled output: the model's forward on one tile, the
    blending's tile-sized float32 buffers and the rows it carries from one tile row to the next
    (full width; old and new carry)."""
    th, tw = min(tile, h), min(tile, w)
    tile_out = th * tw * scale * scale
    buffers = (_TILE_PLANES_PER_CHANNEL * n * channels + _TILE_PLANES) * 4 * tile_out
    carry = 2 * (n * channels + 1) * 4 * carry_rows(h, tile, overlap) * scale * w * scale
    return peak_bytes(model, n, th, tw, dtype) + buffers + carry


def choose_tile(model: torch.nn.Module, n: int, h: int, w: int, dtype: torch.dtype, budget: int,
                min_size: int, scale: int = 4, overlap_of: Callable[[int], int] = lambda t: t // 4) -> int | None:
    """None if the whole (n, 3, h, w) image fits in ``budget`` bytes, else the largest square
    tile (a multiple of 16, at least ``min_size``) whose tiled run (``tiled_bytes``, with
    ``overlap_of(tile)`` pixels of overlap) does; the smallest when none does."""
    if peak_bytes(model, n, h, w, dtype) <= budget:
        return None
    per_tile_pixel = peak_bytes(model, n, 1, 1, dtype) or 1
    side = int((max(budget, 0) / per_tile_pixel) ** 0.5) // 16 * 16  # the forward alone: an upper bound
    while side > 16 and tiled_bytes(model, n, h, w, dtype, side, overlap_of(side), scale) > budget:
        side -= 16
    return max(side, min_size, 16)
