"""SIGTERM and SIGHUP during ``esr upscale`` are handled as Ctrl-C is (issue 27): the file in
progress leaves no temporary file and nothing under its final name, the summary is printed,
and the exit status is 128 + the signal's number. Through the CLI in a subprocess, as a batch
system or a closing terminal would stop it."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image as PILImage

from esr_models.io.outputs import TEMP_PREFIX

pytestmark = pytest.mark.shared


def _finished(out: Path) -> list[Path]:
    return [p for p in out.iterdir() if not p.name.startswith(TEMP_PREFIX)] if out.is_dir() else []


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_mid_batch_stops_cleanly_with_the_summary(tmp_path, random_png, signum):
    src = tmp_path / "in"
    for i in range(8):
        random_png(src / f"im{i}.png", seed=i, size=(128, 128))
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "esr_models.cli", "upscale", str(src), "-o", str(out),
                             "--model", "pfdnlite", "-q"], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 120
        while not _finished(out):  # the first output: the run is in its loop, a file in progress
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no output appeared"
            time.sleep(0.02)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signum, stderr
    done = _finished(out)
    assert 1 <= len(done) < 8, "the signal did not land mid-batch"
    name = signal.Signals(signum).name
    m = re.search(rf"(\d+) upscaled, 0 skipped, 0 failed, (\d+) not done \(interrupted by {name}\)", stderr)
    assert m, stderr
    upscaled, not_done = int(m.group(1)), int(m.group(2))
    # (A signal landing between a file's move into place and its report counts it not done.)
    assert upscaled + not_done == 8 and upscaled in (len(done), len(done) - 1)
    assert "Traceback" not in stderr
    assert not [p.name for p in out.iterdir() if p.name.startswith(TEMP_PREFIX)]
    for p in done:  # complete files only
        with PILImage.open(p) as im:
            im.load()
            assert im.size == (512, 512)
