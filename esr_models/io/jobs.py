"""One batch of files: which jobs run, one file's run, and the report. The same functions
serve the local loop (``esr upscale``) and any other runner (video, Ray workers), so the
rules of ``outputs.py`` hold everywhere.

A file's outcome is ``done``, ``skipped`` (its output exists: re-running resumes a batch) or
``failed`` (reported by name with the reason; the rest of the batch goes on)."""
from __future__ import annotations

import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from esr_kernels.errors import EsrError

from .images import read_image, write_image
from .outputs import Job, OutputExistsError, file_identity, name_too_long, write_atomically

DONE, SKIPPED, FAILED = "done", "skipped", "failed"


@dataclass
class Outcome:
    src: str
    status: str                 # DONE, SKIPPED or FAILED
    message: str = ""           # why skipped or failed, naming the file
    notes: list[str] = field(default_factory=list)


def format_bytes(n: float) -> str:
    """A size for messages: MiB below 1 GiB ("96 MiB", "0.5 MiB"), GiB from there ("1.5 GiB")."""
    if n >= 2**30:
        return f"{n / 2**30:.1f} GiB"
    mib = n / 2**20
    return f"{mib:.0f} MiB" if mib >= 10 else f"{mib:.2g} MiB"


# What torch's allocators say when they run out: the CPU one raises a RuntimeError
# ("[enforce fail at alloc_cpu.cpp:...] ... DefaultCPUAllocator: not enough memory: you tried to
# allocate 768000000 bytes"), CUDA's an OutOfMemoryError ("CUDA out of memory. Tried to allocate
# 2.00 GiB ..."); a kernel's own allocation can also surface as "CUDA error: out of memory".
_OOM_TEXT = re.compile(r"not enough memory|out of memory|DefaultCPUAllocator", re.I)
_TRIED_BYTES = re.compile(r"tried to allocate (\d+) bytes", re.I)
_TRIED_SIZE = re.compile(r"tried to allocate (\d+(?:\.\d+)? [KMGT]iB)", re.I)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for an allocation failure, whatever raised it (Python, torch's CPU or CUDA allocator)."""
    if isinstance(exc, (MemoryError, torch.OutOfMemoryError)):
        return True
    return isinstance(exc, RuntimeError) and bool(_OOM_TEXT.search(str(exc)))


def out_of_memory_message(exc: BaseException) -> str:
    """What ran out (host or GPU memory, and the allocation that failed when torch says) and
    what to do: a smaller ``--tile``, or ``ESR_MAX_MEMORY_MB`` so that the automatic tile fits."""
    text = str(exc)
    where = "GPU memory" if isinstance(exc, torch.OutOfMemoryError) or "CUDA" in text else "memory"
    size = None
    if m := _TRIED_BYTES.search(text):
        size = format_bytes(int(m.group(1)))
    elif m := _TRIED_SIZE.search(text):
        size = m.group(1)
    failed = f" (an allocation of {size} failed)" if size else ""
    return (f"out of {where}{failed}: upscale it in smaller pieces with a smaller --tile (256, or half "
            "the one given), or set ESR_MAX_MEMORY_MB to the megabytes this run may use so that the "
            "automatic tile fits in them")


def describe_error(exc: BaseException) -> str:
    """One line for the user: the reason, with the exception type where it adds something; running
    out of memory says what to do (``out_of_memory_message``), never the allocator's raw text."""
    if is_out_of_memory(exc) and not isinstance(exc, EsrError):  # ours say what to do themselves
        return out_of_memory_message(exc)
    msg = str(exc) or type(exc).__name__
    return msg if isinstance(exc, (ValueError, OSError, EsrError)) else f"{type(exc).__name__}: {msg}"


def _named(src, msg: str) -> str:
    return msg if str(src) in msg else f"{src}: {msg}"


def blocked_reason(dst: Path) -> str | None:
    """Why nothing can be written at ``dst`` (something other than a regular file is there:
    a folder, a dangling symlink, a FIFO, ...), or None. Only a regular file could have been
    written by an earlier run, so only that is ever a skip."""
    try:
        st = os.lstat(dst)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"output path {dst} cannot be checked ({exc.strerror or exc})"
    if stat.S_ISREG(st.st_mode):
        return None
    if stat.S_ISLNK(st.st_mode):
        if not dst.exists():
            return f"output path {dst} is blocked by a broken symbolic link; remove it or choose another --output"
        if dst.is_file():
            return None  # a link to a regular file: the usual exists/--overwrite rule
    kind = "a folder" if dst.is_dir() else "something that is not a regular file"
    return f"output path {dst} is blocked by {kind}; remove it or choose another --output"


def triage(jobs: list[Job], earlier: list[Path], overwrite: bool) -> tuple[list[Job], list[Outcome]]:
    """(jobs to run, outcomes decided without running): earlier outputs among the inputs and
    existing outputs (without ``overwrite``) are skipped; an output that would land on an
    input fails. Re-checked at write time (``run_job``), since files can appear meanwhile."""
    decided = [Outcome(str(src), SKIPPED, f"{src}: an output of an earlier run (its input is in this "
                                          "batch)") for src in earlier]
    input_ids = {file_identity(job.src) for job in jobs}
    todo = []
    for job in jobs:
        blocked = name_too_long(job.dst) or blocked_reason(job.dst)
        if blocked:
            decided.append(Outcome(str(job.src), FAILED, f"{job.src}: {blocked}"))
        elif job.dst.exists() and file_identity(job.dst) in input_ids:
            decided.append(Outcome(str(job.src), FAILED, f"{job.src}: its output {job.dst} would "
                                   "overwrite an input; choose another --output or --suffix"))
        elif job.dst.exists() and not overwrite:
            decided.append(Outcome(str(job.src), SKIPPED, f"{job.src}: {job.dst} exists "
                                   "(--overwrite to replace it)"))
        else:
            todo.append(job)
    return todo, decided


def run_job(upscale_image: Callable, job: Job, overwrite: bool, max_pixels: int | None) -> Outcome:
    """Read, upscale and write one file. Never raises (but KeyboardInterrupt): every failure
    becomes a FAILED outcome naming the file. ``upscale_image``: Image -> Image."""
    try:
        blocked = name_too_long(job.dst) or blocked_reason(job.dst)
        if blocked:
            return Outcome(str(job.src), FAILED, _named(job.src, blocked))
        img = read_image(job.src, max_pixels=max_pixels or None)
        out = upscale_image(img)
        write_atomically(job.dst, lambda tmp: write_image(tmp, out), overwrite)
        return Outcome(str(job.src), DONE, notes=list(img.notes))
    except OutputExistsError as exc:  # a concurrent run made it meanwhile
        return Outcome(str(job.src), SKIPPED, _named(job.src, str(exc)))
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # one file's failure never stops the batch
        return Outcome(str(job.src), FAILED, _named(job.src, describe_error(exc)))


class Report:
    """Prints each outcome as it comes, then the summary; ``exit_code`` is 1 if anything failed."""

    def __init__(self, write: Callable[[str], None] | None = None):
        self.write = write or (lambda line: print(line, file=sys.stderr))
        self.counts = {DONE: 0, SKIPPED: 0, FAILED: 0}
        self.failures: list[str] = []

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.status] += 1
        for note in outcome.notes:
            self.write(f"note: {note}")  # notes name their file
        if outcome.status == SKIPPED:
            self.write(f"skipped: {outcome.message}")
        elif outcome.status == FAILED:
            self.failures.append(outcome.message)
            self.write(f"error: {outcome.message}")

    def fail(self, message: str) -> None:
        """A failure found before any job ran (a missing input)."""
        self.add(Outcome(message.split(":")[0], FAILED, message))

    def finish(self, interrupted: int | None = None, why: str = "interrupted") -> int:
        """Print the summary; ``interrupted``: the number of files not finished because of
        Ctrl-C or a signal (the one in progress included), ``why`` saying which."""
        c = self.counts
        tail = f", {interrupted} not done ({why})" if interrupted is not None else ""
        print(f"{c[DONE]} upscaled, {c[SKIPPED]} skipped, {c[FAILED]} failed{tail}", file=sys.stderr)
        if self.failures:
            print("failed:", file=sys.stderr)
            for msg in self.failures:
                print(f"  {msg}", file=sys.stderr)
        return 1 if self.failures else 0
