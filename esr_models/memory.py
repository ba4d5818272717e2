"""How much memory a forward pass needs, and how much there is: for choosing a tile size
when the user gave none and a whole image would not fit."""
from __future__ import annotations

import os

import torch

# Peak bytes a float32 whole-image forward allocates per LR pixel (batch 1): the peak RSS
# growth of 256x256 and 768x768 forwards on CPU was, reference / fused, IFADNet 3052 / 1608,
# PFDNLite 2279 / 668, RLFN 1662 / 1080 (2026-11-22). These bounds, with a margin, are the
# reference's, so they are safe for both paths.
PEAK_BYTES_PER_PIXEL = {"IFADNet": 3500, "PFDNLite": 2600, "RLFN": 2000}
_DEFAULT_PEAK = 4000


def peak_bytes(model: torch.nn.Module, n: int, h: int, w: int, dtype: torch.dtype) -> int:
    """Estimated peak bytes of ``model`` on an (n, 3, h, w) input of ``dtype``."""
    per_pixel = PEAK_BYTES_PER_PIXEL.get(type(model).__name__, _DEFAULT_PEAK)
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
        raise ValueError(f"environment variable ESR_MAX_MEMORY_MB={text!r}: expected a positive number of "
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
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),):
        try:
            limit = open(limit_file).read().strip()
            if limit != "max":
                avail = min(avail, int(limit) - int(open(usage_file).read()))
        except (OSError, ValueError):
            pass
    if cap_bytes is not None:
        avail = min(avail, cap_bytes)
    return max(int(avail), 0)


def choose_tile(model: torch.nn.Module, n: int, h: int, w: int, dtype: torch.dtype, budget: int,
                min_size: int) -> int | None:
    """None if the whole (n, 3, h, w) image fits in ``budget`` bytes, else the largest square
    tile (a multiple of 16, at least ``min_size``) that does."""
    if peak_bytes(model, n, h, w, dtype) <= budget:
        return None
    per_tile_pixel = peak_bytes(model, n, 1, 1, dtype) or 1
    side = int((budget / per_tile_pixel) ** 0.5) // 16 * 16
    return max(side, min_size, 16)
