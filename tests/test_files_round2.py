"""What happens to the user's files, round 2 (issue #18): every file the tool writes follows the
no-overwrite rule (export, train), earlier outputs are recognised on evidence only, blocked
output paths fail, bad environment variables and bad checkpoints are one clear error. The CLI
through subprocess, as users meet it; tiny images and the smallest model keep each case fast."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

pytestmark = pytest.mark.shared  # the CLI loads the upstream weights


def esr(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "esr_models.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def image(path: Path, seed: int = 0, size=(20, 20)) -> Path:
    """An RGB PNG of ``size`` (height, width) with random pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    PILImage.fromarray(arr).save(path)
    return path


def weights_dir() -> Path:
    return Path(os.environ["ESR_WEIGHTS_DIR"])


# ---------------------------------------------------------------- (a) export never replaces a source

@pytest.mark.parametrize("case", ["model-name-into-weights", "source-file-itself", "other-name-in-weights",
                                  "symlink-to-source", "onnx-into-weights"])
def test_export_never_writes_over_its_source_or_the_weights_folder(tmp_path, case):
    wdir = tmp_path / "weights"  # a copy, so that a failure of this test cannot break the others
    wdir.mkdir()
    shutil.copy(weights_dir() / "team01_pfdnlite.pth", wdir / "team01_pfdnlite.pth")
    src = wdir / "team01_pfdnlite.pth"
    before = src.read_bytes()
    env = {"ESR_WEIGHTS_DIR": str(wdir)}
    if case == "model-name-into-weights":
        args = ["pfdnlite", "-o", src]
    elif case == "source-file-itself":
        mine = tmp_path / "mine.pth"
        shutil.copy(src, mine)
        src, before = mine, mine.read_bytes()
        args = [mine, "-o", mine]
    elif case == "other-name-in-weights":
        args = ["pfdnlite", "-o", wdir / "team00_rlfn.pth"]
    elif case == "symlink-to-source":
        (tmp_path / "link.pth").symlink_to(src)
        args = ["pfdnlite", "-o", tmp_path / "link.pth"]
    else:
        args = ["pfdnlite", "--onnx", wdir / "pfdnlite.onnx"]
    proc = esr("export", *args, "--overwrite", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "write the export elsewhere" in proc.stderr and "Traceback" not in proc.stderr
    assert src.read_bytes() == before
    assert sorted(p.name for p in wdir.iterdir()) == ["team01_pfdnlite.pth"]


def test_export_library_refuses_its_source(tmp_path):
    from esr_models.training.deploy_checkpoint import export_deploy_checkpoint

    mine = tmp_path / "mine.pth"
    shutil.copy(weights_dir() / "team01_pfdnlite.pth", mine)
    before = mine.read_bytes()
    with pytest.raises(ValueError, match="being exported"):
        export_deploy_checkpoint(mine, mine, overwrite=True)
    assert mine.read_bytes() == before


# ---------------------------------------------------------------- (a) train never replaces another run

def _train_folders(root: Path) -> tuple[Path, Path]:
    train = root / "train"
    val = root / "val"
    for i in range(2):
        image(train / f"t{i}.png", seed=i, size=(40, 40))
    image(val / "v.png", seed=7, size=(40, 40))
    return train, val


_TINY = ["--model", "pfdnlite", "--iters", "1", "--patch", "32", "--batch", "1", "--val-every", "1",
         "--num-workers", "0", "--no-progress", "--threads", "1"]


@pytest.mark.parametrize("held", ["config.json", "log.csv", "checkpoints/best.pth", "checkpoints/last.pth"])
def test_train_refuses_a_folder_holding_another_run(tmp_path, held):
    train, val = _train_folders(tmp_path)
    out = tmp_path / "run"
    foreign = out / held
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"another run's file")
    proc = esr("train", *_TINY, "--train-hr", train, "--val-hr", val, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "already holds a run" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert foreign.read_bytes() == b"another run's file"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [held]


def test_train_overwrite_replaces_the_whole_old_run(tmp_path):
    train, val = _train_folders(tmp_path)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "log.csv").write_text("foreign,log\n1,2\n")
    (out / "config.json").write_text("{}")
    (out / "checkpoints" / "best.pth").write_bytes(b"foreign")
    proc = esr("train", *_TINY, "--train-hr", train, "--val-hr", val, "--out", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "foreign" not in (out / "log.csv").read_text()
    assert (out / "log.csv").read_text().startswith("global_iter,")
    assert torch.load(out / "checkpoints" / "best.pth", weights_only=True)["format"] == "esr-train-1"
    assert b"foreign" not in (out / "config.json").read_bytes()


# ---------------------------------------------------------------- (b) earlier outputs only on evidence

def test_overwrite_into_the_input_folder_never_replaces_an_input_named_like_an_output(tmp_path):
    folder = tmp_path / "in"
    image(folder / "a.png", seed=1)
    photo = image(folder / "a_x4.png", seed=2, size=(20, 24))  # a different photo, not 4x a.png
    before = photo.read_bytes()
    proc = esr("upscale", folder, "-o", folder, "--overwrite", "--model", "pfdnlite", "-q")
    # a.png's output would land on the input a_x4.png: refused; a_x4.png itself is upscaled.
    assert proc.returncode == 1, proc.stderr
    assert "would overwrite an input" in proc.stderr
    assert photo.read_bytes() == before
    assert PILImage.open(folder / "a_x4_x4.png").size == (96, 80)


def test_a_real_earlier_output_is_still_recognised(tmp_path):
    folder = tmp_path / "in"
    image(folder / "a.png", seed=1)
    image(folder / "a_x4.png", seed=2, size=(80, 80))  # exactly 4x a.png: an earlier output
    proc = esr("upscale", folder, "-o", folder, "--model", "pfdnlite", "-q")
    assert proc.returncode == 0 and "0 upscaled, 2 skipped, 0 failed" in proc.stderr, proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x4.png"]


# ---------------------------------------------------------------- (c) blocked output paths fail

@pytest.mark.parametrize("blocker", ["folder", "dangling-symlink", "fifo"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_blocked_output_path_is_a_failure_not_a_skip(tmp_path, blocker, overwrite):
    src = image(tmp_path / "in" / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "a_x4.png"
    if blocker == "folder":
        dst.mkdir()
    elif blocker == "fifo":
        os.mkfifo(dst)
    else:
        dst.symlink_to(out / "gone.png")
    image(tmp_path / "in" / "b.png", seed=3)
    proc = esr("upscale", src, tmp_path / "in" / "b.png", "-o", out, "--model", "pfdnlite", "-q",
               *(["--overwrite"] if overwrite else []))
    assert proc.returncode == 1, proc.stderr
    assert "1 upscaled, 0 skipped, 1 failed" in proc.stderr
    assert "blocked" in proc.stderr and str(dst) in proc.stderr
    assert os.path.lexists(dst) and not dst.is_file()  # left as it was
    assert (out / "b_x4.png").is_file()


def test_write_atomically_does_not_call_a_blocked_path_an_existing_output(tmp_path):
    from esr_models.io.outputs import OutputExistsError, write_atomically

    dst = tmp_path / "x.png"
    dst.symlink_to(tmp_path / "gone.png")
    with pytest.raises(OSError, match="blocked") as info:
        write_atomically(dst, lambda tmp: tmp.write_bytes(b"x"), overwrite=False)
    assert not isinstance(info.value, OutputExistsError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.png"]


# ---------------------------------------------------------------- (d) bad environment variables

@pytest.mark.parametrize("name,value", [("ESR_MAX_MEMORY_MB", "abc"), ("ESR_MAX_MEMORY_MB", "-5"),
                                        ("ESR_MAX_MEMORY_MB", "nan"), ("ESR_CPU_CACHE_MB", "lots"),
                                        ("ESR_CPU_CONV_ENGINE", "maybe"), ("ESR_WEIGHTS_DIR", "FILE"),
                                        ("ESR_CACHE_DIR", "FILE")])
def test_a_bad_environment_variable_is_a_usage_error_naming_it(tmp_path, name, value):
    src = image(tmp_path / "a.png")
    if value == "FILE":
        value = str(image(tmp_path / "not-a-folder.png"))
    proc = esr("upscale", src, "-o", tmp_path / "out", "--model", "pfdnlite", "-q", env={name: value})
    assert proc.returncode == 2, proc.stderr
    assert name in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_memory_cap_is_read_when_valid(monkeypatch):
    from esr_models.infer.memory import available_bytes

    monkeypatch.setenv("ESR_MAX_MEMORY_MB", "1.5")
    assert available_bytes(torch.device("cpu")) <= int(1.5 * 2**20)


# ---------------------------------------------------------------- (e) checkpoints that do not fit

def _broken_checkpoints(tmp_path: Path) -> dict[str, tuple[Path, list[str], list[str], str]]:
    """name -> (file, missing keys, unexpected keys, architecture)."""
    wdir = weights_dir()
    ifad = torch.load(wdir / "team33_IFADNet.pth", weights_only=True)["params_ema"]
    no_up = {k: v for k, v in ifad.items() if not k.startswith("upsampler.")}
    no_up["extra.weight"] = torch.zeros(1)
    torch.save(no_up, tmp_path / "ifadnet_no_upsampler.pth")
    pfd = torch.load(wdir / "team01_pfdnlite.pth", weights_only=True)
    torch.save({k: v for k, v in pfd.items() if not k.startswith("tail.")}, tmp_path / "pfdnlite_no_tail.pth")
    return {
        "ifadnet": (tmp_path / "ifadnet_no_upsampler.pth", ["upsampler.upsampleOneStep.0.weight"],
                    ["extra.weight"], "IFADNet"),
        "pfdnlite": (tmp_path / "pfdnlite_no_tail.pth", ["tail.0.weight", "tail.0.bias"], [], "PFDNLite"),
    }


def _names_keys(text: str, missing, unexpected, arch) -> bool:
    return arch in text and "missing" in text and all(k in text for k in missing + unexpected) \
        and "Traceback" not in text and "KeyError" not in text


@pytest.mark.parametrize("which", ["ifadnet", "pfdnlite"])
@pytest.mark.parametrize("command", ["upscale", "eval", "export-o", "export-onnx"])
def test_a_checkpoint_with_missing_keys_is_one_clear_error(tmp_path, which, command):
    ckpt, missing, unexpected, arch = _broken_checkpoints(tmp_path)[which]
    src = image(tmp_path / "hr" / "a.png", size=(80, 80))
    if command == "upscale":
        proc = esr("upscale", src, "-o", tmp_path / "out", "--model", ckpt, "-q")
    elif command == "eval":
        proc = esr("eval", "--hr", tmp_path / "hr", "--model", ckpt, "--no-ssim")
    elif command == "export-o":
        proc = esr("export", ckpt, "-o", tmp_path / "x.pth")
    else:
        proc = esr("export", ckpt, "--onnx", tmp_path / "x.onnx")
    assert proc.returncode in (1, 2), proc.stderr
    assert _names_keys(proc.stderr, missing, unexpected, arch), proc.stderr
    assert str(ckpt) in proc.stderr


def test_missing_keys_through_the_library_and_spandrels_loader(tmp_path):
    import esr_models
    from esr_models.arch.checkpoints import CheckpointError, detect_checked

    for ckpt, missing, unexpected, arch in _broken_checkpoints(tmp_path).values():
        with pytest.raises(CheckpointError) as info:
            esr_models.load(ckpt)
        assert _names_keys(str(info.value), missing, unexpected, arch)
        # spandrel's loader (esr_models.interop.spandrel) goes through detect_checked
        with pytest.raises(CheckpointError) as info:
            detect_checked(torch.load(ckpt, weights_only=True))
        assert _names_keys(str(info.value), missing, unexpected, arch)


@pytest.mark.parametrize("content", ["random-bytes", "deploy-checkpoint", "a-list", "truncated-zip",
                                     "missing-entries"])
def test_resume_with_a_bad_last_checkpoint_is_one_error_naming_the_file(tmp_path, content):
    train, val = _train_folders(tmp_path)
    last = tmp_path / "run" / "checkpoints" / "last.pth"
    last.parent.mkdir(parents=True)
    if content == "random-bytes":
        last.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif content == "deploy-checkpoint":
        shutil.copy(weights_dir() / "team01_pfdnlite.pth", last)
    elif content == "a-list":
        torch.save([1, 2, 3], last)
    elif content == "truncated-zip":
        torch.save({"model": {"w": torch.zeros(1000)}, "config": {}}, last)
        last.write_bytes(last.read_bytes()[:600])
    else:
        torch.save({"config": {}, "stages": [], "model": {}}, last)
    proc = esr("train", "--resume", "--train-hr", train, "--val-hr", val, "--out", tmp_path / "run",
               "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert str(last) in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1


# ---------------------------------------------------------------- (f) odd file names are per-file outcomes

def test_an_over_long_output_name_fails_that_file_only(tmp_path):
    folder = tmp_path / "in"
    image(folder / ("n" * 250 + ".png"))  # 254 bytes: its output, n..._x4.png, would be 257
    image(folder / "ok.png", seed=1)
    proc = esr("upscale", folder, "-o", tmp_path / "out", "--model", "pfdnlite", "-q")
    assert proc.returncode == 1, proc.stderr
    assert "1 upscaled, 0 skipped, 1 failed" in proc.stderr
    assert "257 bytes" in proc.stderr and "255" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok_x4.png"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_a_non_utf8_name_just_works(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image(Path(os.fsdecode(bytes(folder) + b"/bad\xff.png")))
    proc = esr("upscale", folder, "-o", tmp_path / "out", "--model", "pfdnlite", "-q")
    assert proc.returncode == 0 and "1 upscaled" in proc.stderr, proc.stderr
    assert os.listdir(bytes(tmp_path / "out")) == [b"bad\xff_x4.png"]


# ---------------------------------------------------------------- (g) bounded readers

def _png_with_chunk(path: Path, ctype: bytes, data: bytes, depth: int = 8) -> Path:
    """A 20x20 RGB PNG (8- or 16-bit) with one extra chunk right after IHDR."""
    import struct
    import zlib

    arr = np.random.default_rng(0).integers(0, 2**depth, size=(20, 20 * 3), dtype=np.uint16 if depth == 16 else np.uint8)
    raw = b"".join(b"\0" + (row.astype(">u2").tobytes() if depth == 16 else row.tobytes()) for row in arr)

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 20, 20, depth, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(ctype, data)
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def _deflate_bomb(megabytes: int) -> bytes:
    comp = __import__("zlib").compressobj(9)
    block = b"\0" * (1 << 20)
    return b"".join(comp.compress(block) for _ in range(megabytes)) + comp.flush()


_RSS_SCRIPT = """
import resource, sys
from esr_models.io.images import read_image
read_image(sys.argv[1])  # a normal file first: imports and one read are in the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    img = read_image(sys.argv[2])
    print("notes:", img.notes)
except ValueError as exc:
    print("error:", exc)
print("grew_kb", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("depth", [8, 16])
def test_a_png_icc_bomb_is_never_inflated(tmp_path, depth):
    normal = image(tmp_path / "normal.png")
    bomb = _png_with_chunk(tmp_path / "bomb.png", b"iCCP", b"icc\0\0" + _deflate_bomb(256), depth)
    assert bomb.stat().st_size < 1 << 20  # 256 MB of profile in < 1 MB of file
    proc = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, str(normal), str(bomb)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    grew_mb = int(proc.stdout.split("grew_kb")[1]) / 1024
    assert grew_mb < 64, proc.stdout
    # 8-bit: Pillow refuses the file (its own 1 MB cap, a per-file error); 16-bit: see below
    assert "ICC" in proc.stdout or "too large" in proc.stdout.lower() or "limit" in proc.stdout, proc.stdout
    if depth == 16:  # read through this package's own PNG path: the pixels, without the profile
        assert "notes:" in proc.stdout and "limit" in proc.stdout


def test_png_text_chunks_are_capped_in_all(tmp_path):
    import zlib

    from esr_models.io.images import MAX_METADATA_BYTES, read_image

    # 8 zTXt chunks of 0.9 MB each: under Pillow's 1 MB per chunk, over our cap in all.
    one = b"k\0\0" + zlib.compress(b"\0" * (900 << 10))
    path = _png_with_chunk(tmp_path / "text.png", b"zTXt", one)
    data = path.read_bytes()
    iend = data.rindex(b"IEND") - 4
    extra = data[33:33 + 12 + len(one)]  # the zTXt chunk as written (after signature + IHDR)
    path.write_bytes(data[:iend] + extra * 8 + data[iend:])
    assert 8 * (900 << 10) > MAX_METADATA_BYTES
    with pytest.raises(ValueError, match="text chunks|Too much memory"):
        read_image(path)


def _tiny_clip(path: Path, w: int = 32, h: int = 24, frames: int = 2) -> Path:
    av = pytest.importorskip("av")
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for i in range(frames):
            arr = np.full((h, w, 3), 40 * i, np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    return path


@pytest.mark.parametrize("limit,what", [(100, "frame size 32x24"), (5000, "upscaled frame size 128x96")])
def test_video_honours_max_pixels_from_the_stream_header(tmp_path, limit, what):
    clip = _tiny_clip(tmp_path / "clip.mp4")
    proc = esr("upscale", clip, "-o", tmp_path / "out", "--model", "pfdnlite", "-q", "--max-pixels", limit)
    assert proc.returncode == 1, proc.stderr
    assert what in proc.stderr and "--max-pixels" in proc.stderr and "0 upscaled, 0 skipped, 1 failed" in proc.stderr
    assert list((tmp_path / "out").iterdir()) == []


# ---------------------------------------------------------------- (h) Ctrl-C prints what was done

def test_ctrl_c_mid_batch_prints_the_summary_and_exits_130(tmp_path):
    import signal
    import time

    folder = tmp_path / "in"
    for i in range(40):
        image(folder / f"{i:02d}.png", seed=i, size=(32, 32))
    out = tmp_path / "out"
    out.mkdir()
    (out / "00_x4.png").write_bytes(b"an earlier output")  # one skip in the summary
    proc = subprocess.Popen([sys.executable, "-m", "esr_models.cli", "upscale", str(folder), "-o", str(out),
                             "--model", "pfdnlite", "-q"], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*_x4.png"))) < 3 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    done = len(list(out.glob("*_x4.png"))) - 1
    assert 0 < done < 39, err
    assert f"{done} upscaled, 1 skipped, 0 failed, {39 - done} not done (interrupted)" in err
    assert not [p for p in out.iterdir() if p.name.startswith(".esr-tmp-")]


# ---------------------------------------------------------------- (i) eval names every left-out entry

def test_eval_names_and_counts_every_left_out_entry(tmp_path):
    import json

    hr = tmp_path / "hr"
    image(hr / "a.png", size=(64, 64))
    (hr / "dangling.png").symlink_to(hr / "gone.png")
    os.mkfifo(hr / "pipe.png")
    (hr / "folder.png").mkdir()
    proc = esr("eval", "--model", "pfdnlite", "--hr", hr, "--no-ssim")
    assert proc.returncode == 1, proc.stderr
    for name, what in (("dangling.png", "broken symbolic link"), ("pipe.png", "FIFO"), ("folder.png", "folder")):
        assert name in proc.stderr and what in proc.stderr, proc.stderr
    assert "(over 1 of 1 images); 3 entries named like images left out" in proc.stdout
    data = json.loads(esr("eval", "--model", "pfdnlite", "--hr", hr, "--no-ssim", "--json").stdout)
    assert data["images"] == 1
    assert sorted(e["image"] for e in data["left_out"]) == ["dangling.png", "folder.png", "pipe.png"]


# ---------------------------------------------------------------- (j) the scale comes from the model

def test_eval_uses_the_checkpoints_scale(tmp_path):
    import json

    from esr_models.arch.pfdnlite import PFDNLite

    torch.manual_seed(0)
    ckpt = tmp_path / "x2.pth"
    torch.save(PFDNLite(scale=2).state_dict(), ckpt)
    hr = tmp_path / "hr"
    image(hr / "a.png", size=(40, 40))
    proc = esr("eval", "--model", ckpt, "--hr", hr, "--no-ssim", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 1
