"""Video files in and out (issue #12)."""
from __future__ import annotations

# Containers `esr upscale` takes as video; the output keeps the input's container.
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm"}
