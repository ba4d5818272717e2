"""What happens to the user's files (issues #8 and #18): output naming, the overwrite rule (upscale,
export, train), earlier outputs recognised on evidence only, temporary files, per-file failures,
blocked output paths and odd file names, option errors, Ctrl-C's summary, the entries eval leaves
out. The CLI through subprocess, as users meet it (tiny images and the smallest model keep each
case fast); failures that cannot be provoked from outside (a full disk) through ``cli.main``."""
from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from esr_models import cli
from esr_models.cli.upscale import expand_inputs
from esr_models.io.outputs import TEMP_PREFIX, OutputExistsError, plan_outputs, write_atomically

pytestmark = pytest.mark.shared  # the CLI loads the upstream weights


def image(path: Path, seed: int = 0, size=(20, 18)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(*size, 3), dtype=np.uint8)
    PILImage.fromarray(arr).save(path)
    return path


def weights_dir() -> Path:
    return Path(os.environ["ESR_WEIGHTS_DIR"])


def upscaled_from(out: Path, src: Path) -> bool:
    """Is ``out`` the x4 output of ``src``? (its 4x4 block means reproduce src closely)"""
    a = np.asarray(PILImage.open(out).convert("RGB")).astype(float)
    b = np.asarray(PILImage.open(src).convert("RGB")).astype(float)
    h, w = b.shape[:2]
    return a.shape[:2] == (4 * h, 4 * w) and \
        np.abs(a.reshape(h, 4, w, 4, 3).mean(axis=(1, 3)) - b).mean() < 12


# ---------------------------------------------------------------- naming

@pytest.mark.parametrize("names", [
    ["d1/a.png", "d2/a.png", "d3/a.png"],   # one stem in three folders
    ["a_png.png", "a.jpg", "a.png"],        # the disambiguated name of one is another's stem
    ["x/a.PNG", "y/a.png", "a.png.png"],     # case and double extensions
])
def test_every_input_gets_its_own_output(run_esr, tmp_path, names):
    srcs = [image(tmp_path / "in" / n, seed=i) for i, n in enumerate(names)]
    out = tmp_path / "out"
    proc = run_esr("upscale", *srcs, "-o", out, "--model", "pfdnlite", "-q")
    assert proc.returncode == 0, proc.stderr
    assert f"{len(srcs)} upscaled, 0 skipped, 0 failed" in proc.stderr
    outputs = sorted(out.iterdir())
    assert len(outputs) == len(srcs)
    # each output comes from a different input: match them up by content
    matched = {src: [o for o in outputs if upscaled_from(o, src)] for src in srcs}
    assert all(len(m) == 1 for m in matched.values()), matched
    assert len({m[0] for m in matched.values()}) == len(srcs)


def test_naming_is_deterministic_whatever_the_order(tmp_path):
    srcs = [image(tmp_path / d / "a.png", seed=i) for i, d in enumerate(("p", "q", "r"))]
    jobs1, _ = plan_outputs(srcs, tmp_path / "o", "_x4")
    jobs2, _ = plan_outputs(list(reversed(srcs)), tmp_path / "o", "_x4")
    assert {j.src: j.dst for j in jobs1} == {j.src: j.dst for j in jobs2}
    assert len({j.dst for j in jobs1}) == 3


def test_one_file_through_two_paths_is_one_input(run_esr, tmp_path):
    src = image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "link.png").symlink_to(src)
    os.link(src, tmp_path / "in" / "hard.png")
    proc = run_esr("upscale", src, tmp_path / "in" / ".." / "in" / "a.png", tmp_path / "in" / "link.png",
                   tmp_path / "in" / "hard.png", "-o", tmp_path / "out", "--model", "pfdnlite", "-q")
    assert proc.returncode == 0 and "1 upscaled" in proc.stderr, proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_x4.png"]


# ---------------------------------------------------------------- the overwrite rule

def test_existing_files_are_skipped_unless_overwrite(run_esr, tmp_path):
    src = image(tmp_path / "in" / "photo.jpg")
    out = tmp_path / "out"
    out.mkdir()
    mine = image(out / "photo.png", seed=9)           # the user's own file
    before = mine.read_bytes()
    proc = run_esr("upscale", src, "-o", out, "--suffix", "", "--model", "pfdnlite", "-q")
    assert proc.returncode == 0 and "0 upscaled, 1 skipped, 0 failed" in proc.stderr
    assert "--overwrite" in proc.stderr and mine.read_bytes() == before
    proc = run_esr("upscale", src, "-o", out, "--suffix", "", "--model", "pfdnlite", "-q", "--overwrite")
    assert proc.returncode == 0 and "1 upscaled" in proc.stderr
    assert upscaled_from(mine, src)


def test_rerun_resumes_and_never_upscales_its_own_outputs(run_esr, tmp_path):
    folder = tmp_path / "photos"
    srcs = [image(folder / f"{n}.png", seed=i) for i, n in enumerate("abc")]
    first = run_esr("upscale", folder, "-o", folder, "--model", "pfdnlite", "-q")
    assert first.returncode == 0 and "3 upscaled" in first.stderr
    (folder / "b_x4.png").unlink()                    # as if the first run was interrupted
    again = run_esr("upscale", folder, "-o", folder, "--model", "pfdnlite", "-q")
    assert again.returncode == 0, again.stderr
    assert "1 upscaled, 4 skipped, 0 failed" in again.stderr  # a, c done; a_x4, c_x4 are outputs
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["a.png", "a_x4.png", "b.png", "b_x4.png", "c.png", "c_x4.png"]
    assert upscaled_from(folder / "b_x4.png", srcs[1])


def test_inputs_are_never_overwritten_even_with_overwrite(run_esr, tmp_path):
    src = image(tmp_path / "a.png")
    before = src.read_bytes()
    proc = run_esr("upscale", src, "-o", tmp_path, "--suffix", "", "--overwrite", "--model", "pfdnlite", "-q")
    assert proc.returncode == 1 and "would overwrite an input" in proc.stderr
    assert src.read_bytes() == before


def test_interrupted_write_leaves_no_file_under_the_final_name(tmp_path):
    dst = tmp_path / "a_x4.png"

    def half_then_fail(tmp: Path):
        tmp.write_bytes(b"\x89PNG half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(dst, half_then_fail, overwrite=False)
    assert list(tmp_path.iterdir()) == []             # neither the final name nor the temp file


def test_concurrent_writer_is_not_overwritten(tmp_path):
    dst = tmp_path / "a_x4.png"

    def other_run_finishes_first(tmp: Path):
        tmp.write_bytes(b"mine")
        dst.write_bytes(b"theirs")

    with pytest.raises(OutputExistsError):
        write_atomically(dst, other_run_finishes_first, overwrite=False)
    assert dst.read_bytes() == b"theirs" and [p.name for p in tmp_path.iterdir()] == ["a_x4.png"]


def test_leftover_temp_files_are_not_inputs(tmp_path):
    folder = tmp_path / "in"
    image(folder / "a.png")
    (folder / f"{TEMP_PREFIX}dead-a_x4.png").write_bytes(b"truncated")
    files, errors, _ = expand_inputs([str(folder)])
    assert [f.name for f in files] == ["a.png"] and not errors


# ---------------------------------------------------------------- one failure does not stop the batch

def test_bad_files_are_reported_and_the_rest_run(run_esr, tmp_path):
    d = tmp_path / "in"
    image(d / "a.png")
    image(d / "tiny.png", size=(5, 5))                       # below the minimum size
    image(d / "big.png", size=(40, 40))                      # over --max-pixels
    (d / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    image(d / "z.png", seed=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "z_x4.png").mkdir()                               # output path blocked by a folder
    proc = run_esr("upscale", d, "-o", out, "--model", "pfdnlite", "--max-pixels", "1000", "--overwrite", "-q")
    assert proc.returncode == 1
    assert "1 upscaled, 0 skipped, 4 failed" in proc.stderr
    summary = proc.stderr.split("failed:")[-1]
    for name in ("tiny.png", "big.png", "corrupt.png", "z.png"):
        assert name in summary
    assert "Traceback" not in proc.stderr
    assert (out / "a_x4.png").is_file()
    assert not any(p.name.startswith(TEMP_PREFIX) for p in out.iterdir())


@pytest.mark.parametrize("failure", ["disk_full", "out_of_memory"])
def test_io_and_memory_failures_are_per_file(tmp_path, monkeypatch, capsys, failure):
    d = tmp_path / "in"
    for n in "abc":
        image(d / f"{n}.png")
    if failure == "disk_full":
        from esr_models.io import jobs as batch

        real = batch.write_image

        def write(path, img):
            if "b_x4" in path.name:
                Path(path).write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            real(path, img)

        monkeypatch.setattr(batch, "write_image", write)
    else:
        from esr_models.infer.upscaler import Upscaler

        real = Upscaler.upscale_image

        def upscale(self, img):  # the second file (b.png) runs out of memory
            upscale.calls += 1
            if upscale.calls == 2:
                raise MemoryError
            return real(self, img)

        upscale.calls = 0
        monkeypatch.setattr(Upscaler, "upscale_image", upscale)
    rc = cli.main(["upscale", str(d), "-o", str(tmp_path / "out"), "--model", "pfdnlite", "-q"])
    err = capsys.readouterr().err
    assert rc == 1 and "2 upscaled, 0 skipped, 1 failed" in err
    assert ("No space left" in err) if failure == "disk_full" else ("out of memory" in err)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a_x4.png", "c_x4.png"]


# ---------------------------------------------------------------- option errors come first

@pytest.mark.parametrize("options, message", [
    (["--suffix", "a/b"], "--suffix"),
    (["--tile", "0"], "--tile"),
    (["--tile", "32", "--tile-overlap", "32"], "--tile-overlap"),
    (["--device", "cuda"], "CUDA is not available"),
    (["--fused", "--backend", "cuda", "--device", "cpu"], "runs on cuda tensors, not cpu"),
    (["--model", "nosuchmodel"], "unknown model"),
])
def test_option_errors_create_nothing(run_esr, tmp_path, options, message):
    src = image(tmp_path / "a.png")
    out = tmp_path / "new" / "out"
    proc = run_esr("upscale", src, "-o", out, *options, "-q")
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "new").exists()


def test_output_blocked_by_a_file_is_an_option_error(run_esr, tmp_path):
    src = image(tmp_path / "a.png")
    (tmp_path / "out").write_text("a file, not a folder")
    proc = run_esr("upscale", src, "-o", tmp_path / "out" / "sub", "-q")
    assert proc.returncode == 2 and "not a folder" in proc.stderr


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_fused_low_precision_on_cpu_runs_what_it_says(run_esr, tmp_path, dtype):
    """--fused --dtype bfloat16/float16 on a CPU: the backend "auto" picks is the one named, and
    a dtype the kernels compute in float32 (float16; bf16 without AVX512_BF16) is said."""
    import torch

    from esr_kernels.policy import bf16_gemm_available, resolve_backend

    expected = resolve_backend("auto", torch.device("cpu"), getattr(torch, dtype))
    src = image(tmp_path / "a.png")
    proc = run_esr("upscale", src, "-o", tmp_path / "o", "--fused", "--dtype", dtype, "--model", "pfdnlite", "-q")
    assert proc.returncode == 0, proc.stderr
    assert f"fused backend: {expected}" in proc.stderr
    if expected == "reference":
        assert "warning:" in proc.stderr
    elif dtype == "float16" or not bf16_gemm_available():
        assert "compute in float32" in proc.stderr
    assert upscaled_from(tmp_path / "o" / "a_x4.png", src)


def test_rerun_with_an_extension_sorting_after_png_does_nothing_new(tmp_path):
    """s.png and s_x4.webp in one folder: the second run must resume, not make a third file."""
    folder = tmp_path / "in"
    image(folder / "s.png")
    PILImage.fromarray(np.zeros((20, 18, 3), np.uint8)).save(folder / "s_x4.webp", lossless=True)
    first, _ = plan_outputs(sorted(folder.iterdir()), folder, "_x4")
    for job in first:  # what the first run wrote: 4x its input (an earlier output is known by its size)
        PILImage.fromarray(np.zeros((80, 72, 3), np.uint8)).save(job.dst)
    second, earlier = plan_outputs(sorted(folder.iterdir()), folder, "_x4")
    assert {(j.src, j.dst) for j in second} == {(j.src, j.dst) for j in first}
    assert sorted(p.name for p in earlier) == sorted(j.dst.name for j in first)


def test_one_file_under_two_names_gets_one_name_whatever_the_order(tmp_path):
    src = image(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "l.png").symlink_to(src)
    one, _ = plan_outputs([tmp_path / "in" / "l.png", src], tmp_path / "o", "_x4")
    two, _ = plan_outputs([src, tmp_path / "in" / "l.png"], tmp_path / "o", "_x4")
    assert [j.dst.name for j in one] == [j.dst.name for j in two] == ["a_x4.png"]


def test_long_names_fit_with_their_temporary_name(tmp_path):
    dst = tmp_path / ("n" * 245 + "_x4.png")
    write_atomically(dst, lambda tmp: tmp.write_bytes(b"ok"), overwrite=False)
    assert dst.read_bytes() == b"ok" and len(list(tmp_path.iterdir())) == 1


def test_odd_entries_in_folders_are_noted_not_dropped_silently(tmp_path):
    folder = tmp_path / "in"
    image(folder / "a.png")
    os.mkfifo(folder / "pipe.png")
    (folder / "dangling.png").symlink_to(folder / "gone.png")
    files, errors, notes = expand_inputs([str(folder), str(folder / "pipe.png")])
    assert [f.name for f in files] == ["a.png"]
    assert any("not regular files" in n and "pipe.png" in n and "dangling.png" in n for n in notes)
    assert errors == [f"{folder / 'pipe.png'}: not a regular file"]


def test_unwritable_output_folder_is_one_line(run_esr, tmp_path):
    src = image(tmp_path / "a.png")
    proc = run_esr("upscale", src, "-o", "/proc/esr-cannot-be-made", "--model", "pfdnlite", "-q")
    assert proc.returncode == 2 and "cannot create the output folder" in proc.stderr
    assert "Traceback" not in proc.stderr


# ---------------------------------------------------------------- export never replaces a source

@pytest.mark.parametrize("case", ["model-name-into-weights", "source-file-itself", "other-name-in-weights",
                                  "symlink-to-source", "onnx-into-weights"])
def test_export_never_writes_over_its_source_or_the_weights_folder(run_esr, tmp_path, case):
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
    proc = run_esr("export", *args, "--overwrite", env=env)
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


# ---------------------------------------------------------------- train never replaces another run

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
def test_train_refuses_a_folder_holding_another_run(run_esr, tmp_path, held):
    train, val = _train_folders(tmp_path)
    out = tmp_path / "run"
    foreign = out / held
    foreign.parent.mkdir(parents=True)
    foreign.write_bytes(b"another run's file")
    proc = run_esr("train", *_TINY, "--train-hr", train, "--val-hr", val, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "already holds a run" in proc.stderr and "--overwrite" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert foreign.read_bytes() == b"another run's file"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [held]


def test_train_overwrite_replaces_the_whole_old_run(run_esr, tmp_path):
    train, val = _train_folders(tmp_path)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "log.csv").write_text("foreign,log\n1,2\n")
    (out / "config.json").write_text("{}")
    (out / "checkpoints" / "best.pth").write_bytes(b"foreign")
    proc = run_esr("train", *_TINY, "--train-hr", train, "--val-hr", val, "--out", out, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert "foreign" not in (out / "log.csv").read_text()
    assert (out / "log.csv").read_text().startswith("global_iter,")
    assert torch.load(out / "checkpoints" / "best.pth", weights_only=True)["format"] == "esr-train-1"
    assert b"foreign" not in (out / "config.json").read_bytes()


@pytest.mark.parametrize("content", ["random-bytes", "deploy-checkpoint", "a-list", "truncated-zip",
                                     "missing-entries"])
def test_resume_with_a_bad_last_checkpoint_is_one_error_naming_the_file(run_esr, tmp_path, content):
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
    proc = run_esr("train", "--resume", "--train-hr", train, "--val-hr", val, "--out", tmp_path / "run",
                   "--no-progress")
    assert proc.returncode == 2, proc.stderr
    assert str(last) in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1


# ---------------------------------------------------------------- earlier outputs only on evidence

def test_overwrite_into_the_input_folder_never_replaces_an_input_named_like_an_output(run_esr, tmp_path):
    folder = tmp_path / "in"
    image(folder / "a.png", seed=1, size=(20, 20))
    photo = image(folder / "a_x4.png", seed=2, size=(20, 24))  # a different photo, not 4x a.png
    before = photo.read_bytes()
    proc = run_esr("upscale", folder, "-o", folder, "--overwrite", "--model", "pfdnlite", "-q")
    # a.png's output would land on the input a_x4.png: refused; a_x4.png itself is upscaled.
    assert proc.returncode == 1, proc.stderr
    assert "would overwrite an input" in proc.stderr
    assert photo.read_bytes() == before
    assert PILImage.open(folder / "a_x4_x4.png").size == (96, 80)


def test_a_real_earlier_output_is_still_recognised(run_esr, tmp_path):
    folder = tmp_path / "in"
    image(folder / "a.png", seed=1, size=(20, 20))
    image(folder / "a_x4.png", seed=2, size=(80, 80))  # exactly 4x a.png: an earlier output
    proc = run_esr("upscale", folder, "-o", folder, "--model", "pfdnlite", "-q")
    assert proc.returncode == 0 and "0 upscaled, 2 skipped, 0 failed" in proc.stderr, proc.stderr
    assert sorted(p.name for p in folder.iterdir()) == ["a.png", "a_x4.png"]


# ---------------------------------------------------------------- blocked output paths fail

@pytest.mark.parametrize("blocker", ["folder", "dangling-symlink", "fifo"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_blocked_output_path_is_a_failure_not_a_skip(run_esr, tmp_path, blocker, overwrite):
    src = image(tmp_path / "in" / "a.png", size=(20, 20))
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "a_x4.png"
    if blocker == "folder":
        dst.mkdir()
    elif blocker == "fifo":
        os.mkfifo(dst)
    else:
        dst.symlink_to(out / "gone.png")
    image(tmp_path / "in" / "b.png", seed=3, size=(20, 20))
    proc = run_esr("upscale", src, tmp_path / "in" / "b.png", "-o", out, "--model", "pfdnlite", "-q",
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


# ---------------------------------------------------------------- odd file names are per-file outcomes

def test_an_over_long_output_name_fails_that_file_only(run_esr, tmp_path):
    folder = tmp_path / "in"
    image(folder / ("n" * 250 + ".png"), size=(20, 20))  # 254 bytes: its output, n..._x4.png, would be 257
    image(folder / "ok.png", seed=1, size=(20, 20))
    proc = run_esr("upscale", folder, "-o", tmp_path / "out", "--model", "pfdnlite", "-q")
    assert proc.returncode == 1, proc.stderr
    assert "1 upscaled, 0 skipped, 1 failed" in proc.stderr
    assert "257 bytes" in proc.stderr and "255" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["ok_x4.png"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_a_non_utf8_name_just_works(run_esr, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    image(Path(os.fsdecode(bytes(folder) + b"/bad\xff.png")), size=(20, 20))
    proc = run_esr("upscale", folder, "-o", tmp_path / "out", "--model", "pfdnlite", "-q")
    assert proc.returncode == 0 and "1 upscaled" in proc.stderr, proc.stderr
    assert os.listdir(bytes(tmp_path / "out")) == [b"bad\xff_x4.png"]


# ---------------------------------------------------------------- Ctrl-C prints what was done

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


# ---------------------------------------------------------------- eval names every left-out entry

def test_eval_names_and_counts_every_left_out_entry(run_esr, tmp_path):
    import json

    hr = tmp_path / "hr"
    image(hr / "a.png", size=(64, 64))
    (hr / "dangling.png").symlink_to(hr / "gone.png")
    os.mkfifo(hr / "pipe.png")
    (hr / "folder.png").mkdir()
    proc = run_esr("eval", "--model", "pfdnlite", "--hr", hr, "--no-ssim")
    assert proc.returncode == 1, proc.stderr
    for name, what in (("dangling.png", "broken symbolic link"), ("pipe.png", "FIFO"), ("folder.png", "folder")):
        assert name in proc.stderr and what in proc.stderr, proc.stderr
    assert "(over 1 of 1 images); 3 entries named like images left out" in proc.stdout
    data = json.loads(run_esr("eval", "--model", "pfdnlite", "--hr", hr, "--no-ssim", "--json").stdout)
    assert data["images"] == 1
    assert sorted(e["image"] for e in data["left_out"]) == ["dangling.png", "folder.png", "pipe.png"]


# ---------------------------------------------------------------- report writers (issue 27)
# esr gpu-check --json, esr selftest --json, esr roofline --json and gpu_session --out follow one
# rule (esr_models.io.outputs.check_report_path / write_report): the path is checked before any
# work; an existing file is replaced only with --overwrite; a folder, a broken link or a FIFO is
# never replaced; the write is atomic and replaces a symlink rather than writing through it.

def _blocker(path: Path, kind: str) -> None:
    """Put ``kind`` at ``path``: a folder, a link to nowhere, a FIFO or a user's file."""
    if kind == "folder":
        path.mkdir()
    elif kind == "dangling-symlink":
        path.symlink_to(path.parent / "gone.json")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_text("mine")


def _unchanged(path: Path, kind: str) -> bool:
    if kind == "folder":
        return path.is_dir() and not any(path.iterdir())
    if kind == "dangling-symlink":
        return path.is_symlink() and not path.exists()
    if kind == "fifo":
        return os.path.lexists(path) and not path.is_file()
    return path.read_text() == "mine"


@pytest.mark.parametrize("kind", ["folder", "dangling-symlink", "fifo", "file"])
@pytest.mark.parametrize("overwrite", [False, True])
def test_check_report_path_refuses_what_it_may_not_replace(tmp_path, kind, overwrite):
    from esr_kernels.errors import EsrError
    from esr_models.io.outputs import check_report_path

    path = tmp_path / "r.json"
    _blocker(path, kind)
    if kind == "file" and overwrite:
        assert check_report_path(path, overwrite) == path  # the one case --overwrite allows
        return
    with pytest.raises(EsrError, match="--json") as info:
        check_report_path(path, overwrite)
    assert isinstance(info.value, OutputExistsError) == (kind == "file")
    assert ("--overwrite" in str(info.value)) == (kind == "file")
    assert _unchanged(path, kind)


def test_check_report_path_checks_the_folder_it_would_write_in(tmp_path):
    from esr_kernels.errors import InvalidValueError
    from esr_models.io.outputs import check_report_path, write_report

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InvalidValueError, match="is not a folder"):
        check_report_path(tmp_path / "a-file" / "r.json", False)
    with pytest.raises(InvalidValueError, match="expected a file name"):
        check_report_path("", False)
    with pytest.raises(InvalidValueError, match="255"):
        check_report_path(tmp_path / ("n" * 260 + ".json"), False)
    deep = check_report_path(tmp_path / "new" / "deeper" / "r.json", False)  # made when written
    assert not (tmp_path / "new").exists()
    write_report(deep, "{}\n", False)
    assert deep.read_text() == "{}\n" and sorted(p.name for p in deep.parent.iterdir()) == ["r.json"]


def test_write_report_replaces_a_symlink_never_its_target(tmp_path):
    from esr_models.io.outputs import write_report

    target = tmp_path / "mine.txt"
    target.write_text("mine")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    with pytest.raises(OutputExistsError):
        write_report(link, "report", overwrite=False)
    assert link.is_symlink() and target.read_text() == "mine"
    write_report(link, "report", overwrite=True)
    assert not link.is_symlink() and link.read_text() == "report" and target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt", "r.json"]  # no temporary file left


# A gpu-check selection that compiles for 36 minutes cold (every kernel of every model, 4 archs):
# refused in seconds, with the compile cache never created, only if the path is checked first.
@pytest.mark.parametrize("kind", ["folder", "dangling-symlink", "file"])
def test_gpu_check_refuses_a_report_path_before_compiling(run_esr, tmp_path, kind):
    report, cache = tmp_path / "r.json", tmp_path / "cache"
    _blocker(report, kind)
    proc = run_esr("gpu-check", "--json", report, "--cache-dir", cache, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]  # one line
    assert f"--json {report}" in proc.stderr and "Traceback" not in proc.stderr
    assert ("--overwrite" in proc.stderr) == (kind == "file")
    assert not cache.exists() and proc.stdout == "" and _unchanged(report, kind)


# One kernel, one specialisation (what gpu_session's dry run checks): a few seconds once cached.
GPU_CHECK_ONE = ("gpu-check", "--arch", "90", "--models", "pfdnlite", "--dtypes", "float32", "--layouts", "nchw",
                 "--kernels", "_la_reduce_kernel", "--sizes", "24x32", "--batch", "1")


@pytest.mark.triton
def test_gpu_check_json_is_replaced_only_with_overwrite_and_never_through_a_link(run_esr, tmp_path):
    import json

    target = tmp_path / "mine.json"
    target.write_text("mine")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    cache = tmp_path / "cache"
    proc = run_esr(*GPU_CHECK_ONE, "--cache-dir", cache, "--json", link, timeout=300)
    assert proc.returncode == 2 and "exists" in proc.stderr and "--overwrite" in proc.stderr, proc.stderr
    assert link.is_symlink() and target.read_text() == "mine" and not cache.exists()
    proc = run_esr(*GPU_CHECK_ONE, "--cache-dir", cache, "--json", link, "--overwrite", timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert not link.is_symlink() and json.loads(link.read_text())["violations"] == 0
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "mine.json", "r.json"]


@pytest.mark.parametrize("kind", ["folder", "dangling-symlink", "file"])
def test_selftest_refuses_a_report_path_before_any_check(run_esr, tmp_path, kind):
    report = tmp_path / "r.json"
    _blocker(report, kind)
    proc = run_esr("selftest", "--device", "cpu", "--quick", "--json", report, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr
    assert f"--json {report}" in proc.stderr and "Traceback" not in proc.stderr
    # nothing ran: the first line of the run ("esr selftest on ...") is never printed
    assert proc.stdout == "" and _unchanged(report, kind)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]


def test_selftest_overwrite_replaces_a_report_and_never_writes_through_a_link(run_esr, tmp_path):
    import json

    target = tmp_path / "mine.json"
    target.write_text("mine")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    proc = run_esr("selftest", "--device", "cpu", "--quick", "--no-timings", "--models", "pfdnlite",
                   "--json", link, "--overwrite", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr
    assert not link.is_symlink() and json.loads(link.read_text())["verdict"] == "PASS"
    assert target.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.json", "r.json"]


@pytest.mark.parametrize("kind", ["folder", "dangling-symlink", "file"])
def test_roofline_refuses_a_report_path_before_tracing(run_esr, tmp_path, monkeypatch, kind):
    from esr_models.cli import roofline

    report = tmp_path / "r.json"
    _blocker(report, kind)
    proc = run_esr("roofline", "--json", report, timeout=120)
    assert proc.returncode == 2 and f"--json {report}" in proc.stderr, proc.stdout[-2000:] + proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == "" and _unchanged(report, kind)

    def never(**kwargs):  # the work: must not start
        raise AssertionError("esr roofline traced the models before checking --json")

    monkeypatch.setattr(roofline, "build_report", never)
    assert cli.main(["roofline", "--json", str(report)]) == 2


@pytest.mark.triton
def test_roofline_overwrite_replaces_the_report_through_no_link(tmp_path, monkeypatch):
    import json

    from esr_models.cli import roofline

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("traces esr:: ops on CPU tensors in-process: Triton's interpreter")
    real = roofline.build_report
    monkeypatch.setattr(roofline, "build_report",  # one model at a small size: the writing is what is tested
                        lambda dtype_name: real(models=("pfdnlite",), size=(60, 80), dtype_name=dtype_name))
    target = tmp_path / "mine.json"
    target.write_text("mine")
    link = tmp_path / "r.json"
    link.symlink_to(target)
    assert cli.main(["roofline", "--json", str(link)]) == 2
    assert link.is_symlink() and target.read_text() == "mine"
    assert cli.main(["roofline", "--json", str(link), "--overwrite"]) == 0
    assert not link.is_symlink() and json.loads(link.read_text())["models"][0]["model"] == "pfdnlite"
    assert target.read_text() == "mine"
