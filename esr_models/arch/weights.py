"""Finding and verifying the upstream checkpoints.

Lookup order for a model's checkpoint file:
1. ``$ESR_WEIGHTS_DIR/<file>``
2. the user cache, ``$ESR_CACHE_DIR`` or ``~/.cache/esr-kernels/<file>``
3. download from the upstream address into the user cache, giving up after
   ``DOWNLOAD_TIMEOUT_S`` seconds (a hanging server must not hang the user).
Every file is checked against its sha256 before use.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import time
import urllib.request
from pathlib import Path

from esr_kernels.errors import EsrError

from .record import Checkpoint  # noqa: F401  (importable from here, as before)
from .registry import ARCHITECTURES


class WeightsError(EsrError, RuntimeError):
    """A checkpoint could not be found, downloaded or verified."""


# Model name -> its upstream checkpoint (the architecture records', record.py, variants included).
CHECKPOINTS: dict[str, Checkpoint] = {
    name: ckpt for arch in ARCHITECTURES for name, ckpt in ((arch.name, arch.checkpoint), *arch.variants)}

# Whole download, connection included; each socket operation waits at most SOCKET_TIMEOUT_S.
DOWNLOAD_TIMEOUT_S = 15.0
SOCKET_TIMEOUT_S = 5.0


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cache_dir() -> Path:
    env = os.environ.get("ESR_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "esr-kernels"


def candidate_paths(ckpt: Checkpoint) -> list[Path]:
    paths = []
    if os.environ.get("ESR_WEIGHTS_DIR"):
        paths.append(Path(os.environ["ESR_WEIGHTS_DIR"]) / ckpt.filename)
    paths.append(cache_dir() / ckpt.filename)
    return paths


def weights_dirs() -> list[Path]:
    """The folders the package reads checkpoints from: ``$ESR_WEIGHTS_DIR`` and the user cache."""
    dirs = [Path(os.environ["ESR_WEIGHTS_DIR"])] if os.environ.get("ESR_WEIGHTS_DIR") else []
    return dirs + [cache_dir()]


def protected_reason(path: str | Path, sources: tuple = ()) -> str | None:
    """Why the tool must never write ``path`` (even with --overwrite), or None: it is one of
    ``sources`` (a checkpoint being read; any path that reaches the same file, hard links
    included), or it lies in a folder the package reads weights from."""
    path = Path(path)
    real = Path(os.path.realpath(path))
    for src in sources:
        src = Path(src)
        try:
            if real == Path(os.path.realpath(src)) or (path.exists() and os.path.samefile(path, src)):
                return f"{path} is the checkpoint being exported ({src}); write the export elsewhere"
        except OSError:
            continue
    for d in weights_dirs():
        d_real = Path(os.path.realpath(d))
        if real == d_real or d_real in real.parents:
            return (f"{path} is in the weights folder {d} (where the package reads checkpoints, "
                    "checked by sha256); write the export elsewhere")
    return None


def verify(path: Path, ckpt: Checkpoint) -> None:
    actual = sha256_of(path)
    if actual != ckpt.sha256:
        raise WeightsError(
            f"checksum mismatch for {path}: expected sha256 {ckpt.sha256}, got {actual}. "
            "The file is corrupt or not the upstream checkpoint; delete it and retry.")


def download(ckpt: Checkpoint, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    deadline = time.monotonic() + DOWNLOAD_TIMEOUT_S
    try:
        with os.fdopen(fd, "wb") as tmp, urllib.request.urlopen(ckpt.url, timeout=SOCKET_TIMEOUT_S) as resp:
            # read1: whatever has arrived (read(n) would wait for n bytes, so a server that
            # trickles a byte at a time would never reach the deadline check).
            while chunk := resp.read1(1 << 16):
                tmp.write(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"not finished after {DOWNLOAD_TIMEOUT_S:.0f} s")
        verify(Path(tmp_name), ckpt)
        os.replace(tmp_name, dest)
    except WeightsError:
        os.unlink(tmp_name)
        raise
    except Exception as exc:  # network errors of every kind
        os.unlink(tmp_name)
        raise WeightsError(f"could not download {ckpt.filename} from {ckpt.url}: {exc}. "
                           f"Put the file (sha256 {ckpt.sha256}) in $ESR_WEIGHTS_DIR or {dest.parent} "
                           "by hand.") from exc
    return dest


def resolve(name: str, allow_download: bool = True) -> Path:
    """Path to the verified checkpoint of model ``name``."""
    if name not in CHECKPOINTS:
        raise WeightsError(f"no checkpoint known for model {name!r}; known: {sorted(CHECKPOINTS)}")
    ckpt = CHECKPOINTS[name]
    for path in candidate_paths(ckpt):
        if path.is_file():
            verify(path, ckpt)
            return path
    if not allow_download:
        raise WeightsError(f"{ckpt.filename} not found in: " + ", ".join(map(str, candidate_paths(ckpt))))
    return download(ckpt, cache_dir() / ckpt.filename)
