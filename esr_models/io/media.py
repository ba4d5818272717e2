"""What a file is (image or video, by extension) and its size, read from its header without
decoding it. Shared by output planning (outputs.py: is this input an earlier output?), the
video path (video.py) and the commands, so that none of them imports the others for it.
"""
from __future__ import annotations

from pathlib import Path

from .images import IMAGE_SUFFIXES, image_size

# Containers `esr upscale` takes as video; the output keeps the input's container.
VIDEO_SUFFIXES = {".mp4", ".mkv", ".mov", ".webm"}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def frame_size(path: str | Path) -> tuple[int, int] | None:
    """(width, height) of the first video stream, from the container's header (no frame
    decoded); None if PyAV is missing or the file cannot be read."""
    try:
        import av  # here, not at the top: PyAV is optional and only videos need it
        with av.open(str(path), "r") as inp:
            vs = [s for s in inp.streams if s.type == "video"]
            if not vs:
                return None
            cc = vs[0].codec_context
            return (cc.width, cc.height) if cc.width > 0 and cc.height > 0 else None
    except Exception:
        return None


def media_size(path: Path) -> tuple[int, int] | None:
    """(width, height) of an image (by its extension) or else a video; None if unknown."""
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return image_size(path)
    return frame_size(path)
