"""Where each input's output goes, and writing it without ever losing a file.

The rules (README, "What happens to your files"):
- Every input maps to its own output ``<outdir>/<stem><suffix>.png`` (a video keeps its
  container's extension), deterministically: the
  inputs are taken in sorted order of their real paths, and a name already given to another
  input becomes ``<stem>_<ext><suffix>.png``, then ``<stem>_<ext>_2<suffix>.png``, ... One file
  reached twice (two spellings, a symlink, a hard link) is one input.
- With a non-empty suffix, an input that is the planned output of another input is an
  earlier run's output (re-running into the input folder would otherwise make
  ``*_x4_x4.png``) only on evidence: its size (from the header) is exactly ``scale`` times the
  other input's. Then it is skipped, not upscaled; in doubt (another size, an unreadable
  header) it is an input like any other, and never replaced.
- An existing file is never replaced unless ``overwrite``; without it the input is reported as
  skipped, so re-running a batch resumes it. An input is never replaced, even with
  ``overwrite``.
- A file is written under a temporary name in the output folder and then moved to its final
  name in one step, so an interrupted or concurrent run never leaves a truncated file under
  the final name.

Report writers (``esr gpu-check --json``, ``esr selftest --json``, ``esr roofline --json``,
``benchmarks/gpu_session.py --out``) follow the same rule through ``check_report_path`` (called
before any work starts) and ``write_report`` (at the end): an existing file is replaced only with
``--overwrite``; a folder, a broken link or any other entry that is not a regular file is never
replaced; the write is atomic, and a symlink at the path is replaced by the new file, never
written through; missing parent folders are created.
"""
from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from esr_kernels.errors import EsrError, InvalidValueError

from .media import media_size

TEMP_PREFIX = ".esr-tmp-"


class OutputExistsError(EsrError, FileExistsError):
    """The output file exists and overwriting was not asked for."""


@dataclass(frozen=True)
class Job:
    src: Path
    dst: Path


NAME_MAX = 255  # bytes in one file name, on every common file system


def name_bytes(name: str) -> int:
    """Length of a file name in bytes as the OS sees it (names that are not UTF-8 come from
    os.listdir as surrogate escapes; os.fsencode turns them back into their bytes)."""
    return len(os.fsencode(name))


def name_too_long(dst: Path) -> str | None:
    """Why ``dst``'s name cannot be created (over ``NAME_MAX`` bytes), or None."""
    n = name_bytes(dst.name)
    if n <= NAME_MAX:
        return None
    return (f"output name {dst.name[:40]}...{dst.name[-20:]} is {n} bytes, over the file system's limit "
            f"of {NAME_MAX} bytes per name; rename the input or use a shorter --suffix")


def file_identity(path: Path) -> tuple:
    """Identity of a file whatever path reaches it (symlinks, ``..``, hard links)."""
    st = path.stat()
    return (st.st_dev, st.st_ino)


def check_suffix(suffix: str) -> None:
    """``--suffix`` becomes part of a file name: no folder separators, no NUL."""
    bad = [c for c in ("/", os.sep, os.altsep or "/", "\0") if c in suffix]
    if bad:
        raise InvalidValueError(f"--suffix {suffix!r} must not contain {bad[0]!r}: it is part of a file name, "
                                "not a folder")


def default_suffix(scale: int) -> str:
    """The output suffix when ``--suffix`` is not given: the model's scale, ``_x4`` / ``_x2``."""
    return f"_x{int(scale)}"


def plan_outputs(files: list[Path], outdir: Path, suffix: str,
                 out_ext: Callable[[Path], str] = lambda src: ".png",
                 scale: int = 4) -> tuple[list[Job], list[Path]]:
    """(jobs, earlier outputs among the inputs) for ``files``.
    ``out_ext(src)`` is the output's extension (images: ".png"; videos keep their container).

    Names are given in sorted order of the inputs' paths, and a file reached through several
    paths is taken under the smallest of them, so the same set of inputs gets the same names
    whatever order they were listed in. Earlier outputs are found by a fixed point: take them
    out, name the rest again, until the set no longer changes (an earlier output must not take
    a name that its own input had in the run that wrote it)."""
    by_id: dict[tuple, Path] = {}
    for f in files:
        key = file_identity(f)
        if key not in by_id or str(_abs(f)) < str(_abs(by_id[key])):
            by_id[key] = f
    inputs = sorted(by_id.values(), key=lambda p: str(_abs(p)))
    earlier: list[Path] = []
    for _ in range(8):  # converges in two rounds in practice
        kept = [f for f in inputs if f not in earlier]
        dst_of = _name(kept, outdir, suffix, out_ext)
        found = _earlier_outputs(inputs, dst_of, scale) if suffix else []
        if found == earlier:
            break
        earlier = found
    return [Job(src, dst_of[src]) for src in kept], earlier


def _abs(p: Path) -> Path:
    return Path(os.path.abspath(p))


def _name(inputs: list[Path], outdir: Path, suffix: str, out_ext) -> dict[Path, Path]:
    taken: set[str] = set()
    dst_of: dict[Path, Path] = {}
    for src in inputs:  # already in sorted order
        ext = src.suffix.lstrip(".").lower()
        # Compared case-insensitively: on macOS/Windows a.png and A.png are one file.
        name = next(c for c in _candidates(src.stem, ext, suffix, out_ext(src)) if c.lower() not in taken)
        taken.add(name.lower())
        dst_of[src] = outdir / name
    return dst_of


def _earlier_outputs(inputs: list[Path], dst_of: dict[Path, Path], scale: int) -> list[Path]:
    """Inputs sitting where another input's output goes and sized exactly ``scale`` times that
    input: written by an earlier run. (With an empty suffix an output's name is its input's,
    so the caller does not ask.)"""
    by_id = {file_identity(f): f for f in inputs}
    found = set()
    for src, dst in dst_of.items():
        if name_too_long(dst):  # cannot exist; the job fails with the reason (jobs.triage)
            continue
        if dst.exists() and file_identity(dst) in by_id and by_id[file_identity(dst)] != src:
            candidate = by_id[file_identity(dst)]
            if _is_upscaled_from(candidate, src, scale):
                found.add(candidate)
    return sorted(found, key=lambda p: str(_abs(p)))


def _is_upscaled_from(candidate: Path, src: Path, scale: int) -> bool:
    """Evidence that ``candidate`` is ``src`` upscaled: its size is exactly ``scale`` times
    ``src``'s (either way round: EXIF orientation and rotated videos are turned upright).
    Unknown sizes are no evidence."""
    a, b = media_size(candidate), media_size(src)
    if a is None or b is None:
        return False
    return a in ((scale * b[0], scale * b[1]), (scale * b[1], scale * b[0]))


def _candidates(stem: str, ext: str, suffix: str, out_ext: str):
    yield f"{stem}{suffix}{out_ext}"
    yield f"{stem}_{ext}{suffix}{out_ext}"
    k = 2
    while True:
        yield f"{stem}_{ext}_{k}{suffix}{out_ext}"
        k += 1


def is_temp_file(path: Path) -> bool:
    return path.name.startswith(TEMP_PREFIX)


def write_atomically(dst: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Call ``write(tmp)`` on a temporary path in ``dst``'s folder (same extension, so writers
    that pick the format from it still work), then move it to ``dst`` in one step.

    Without ``overwrite`` the move is a hard link, which fails if ``dst`` exists (also when a
    concurrent run made it meanwhile): OutputExistsError, and nothing is replaced. The
    temporary file is removed on every path out, including KeyboardInterrupt."""
    # The extension stays last for writers that pick the format from it. A final name near
    # the 255-byte limit gets a short temporary name instead, so that it still fits.
    token = secrets.token_hex(4)
    name = f"{TEMP_PREFIX}{token}-{dst.name}"
    tmp = dst.with_name(name if name_bytes(name) <= NAME_MAX else f"{TEMP_PREFIX}{token}{dst.suffix}")
    try:
        write(tmp)
        if overwrite:
            if os.path.lexists(dst) and not dst.is_file():  # a folder, a broken link, a FIFO
                raise OSError(f"output path {dst} is blocked by something that is not a regular file "
                              "(a folder or a broken link?); remove it or choose another --output")
            os.replace(tmp, dst)
            return
        try:
            os.link(tmp, dst)
        except FileExistsError:
            if not dst.is_file():  # a folder, a broken link, a FIFO: no earlier output, a failure
                raise OSError(f"output path {dst} is blocked by something that is not a regular file "
                              "(a folder or a broken link?); remove it or choose another --output") from None
            raise OutputExistsError(f"{dst} exists (use --overwrite to replace it)") from None
        except OSError:
            # Filesystems without hard links (FAT, some network mounts): check, then rename.
            # A concurrent run could slip in between; nothing better exists there.
            if dst.exists():
                raise OutputExistsError(f"{dst} exists (use --overwrite to replace it)") from None
            os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()


# ---------------------------------------------------------------- report files
def check_report_path(path: str | os.PathLike, overwrite: bool, option: str = "--json") -> Path:
    """``path`` as a Path if a report can be written there, checked before any work starts
    (an hour of compiling must not end in "Is a directory"). Refused, naming ``option``: a
    folder (or a link to one), a broken link or another entry that is not a regular file, an
    existing file without ``overwrite`` (OutputExistsError), a name over ``NAME_MAX`` bytes, a
    parent path blocked by a file or a folder that cannot be written. A missing parent folder
    is fine: ``write_report`` creates it."""
    p = Path(path)
    if str(path) == "" or p.name in ("", ".", ".."):
        raise InvalidValueError(f"{option} {str(path)!r}: expected a file name (e.g. report.json)")
    if os.path.isdir(p):  # also a link to a folder
        raise InvalidValueError(f"{option} {path}: is a folder; give a file path, e.g. {p / 'report.json'}")
    if os.path.lexists(p):
        if not p.is_file():  # a broken link, a FIFO, a socket: never replaced, even with --overwrite
            raise InvalidValueError(f"{option} {path}: blocked by something that is not a regular file "
                                    "(a broken link?); remove it or choose another path")
        if not overwrite:
            raise OutputExistsError(f"{option} {path}: the file exists (add --overwrite to replace it)")
    too_long = name_too_long(p)
    if too_long:
        raise InvalidValueError(f"{option} {path}: {too_long}")
    folder = Path(os.path.abspath(p)).parent
    while not os.path.lexists(folder):  # the nearest folder that exists is where one is created
        folder = folder.parent
    if not folder.is_dir():
        raise InvalidValueError(f"{option} {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidValueError(f"{option} {path}: cannot write in {folder} (permission denied)")
    return p


def write_report(path: Path, text: str, overwrite: bool) -> None:
    """Write ``text`` to ``path`` (a path ``check_report_path`` accepted) atomically, creating
    missing parent folders: a temporary file in the same folder moved over ``path`` in one
    step, so a symlink at ``path`` is replaced, not followed, and an interrupted run leaves the
    old file or the new one, never half of one. Without ``overwrite`` a file that appeared
    since the check is not replaced (OutputExistsError)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite)
