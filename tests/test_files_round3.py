"""Nothing silently wrong, round 3 (issue #18): a fused model follows its weights on every path
by which they change and pickles; 16-bit files stay 16-bit; training configs and runs that cannot
be right are refused; container memory limits; the scale comes from the model everywhere.
Tiny images and the smallest model keep each case fast."""
from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import esr_models

pytestmark = pytest.mark.shared  # the upstream weights


def esr(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "esr_models.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _cpu_backend_or_skip():
    from esr_kernels.policy import resolve_backend

    try:
        resolve_backend("cpu", torch.device("cpu"))
    except RuntimeError as exc:
        pytest.skip(str(exc))


def _other_weights(model) -> dict:
    return {k: v * 1.1 if v.is_floating_point() else v for k, v in model.state_dict().items()}


# ---------------------------------------------------------------- (1) fused models follow their weights

@pytest.mark.parametrize("path", ["normal-load", "inference-mode-load", "compiled-call", "explicit-repack"])
def test_fused_model_runs_the_weights_it_reports(path):
    """After the weights change, the fused output is the reference's output for the new weights,
    whatever mode the tensors were made in and whether the model is called through
    torch.compile; in-place edits of inference tensors (no version counter) through repack_."""
    from esr_models.fused.fusion import repack_

    _cpu_backend_or_skip()
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ref = esr_models.load("pfdnlite")
    new = _other_weights(ref)
    ref.load_state_dict(new)
    with torch.no_grad():
        want = ref(x)
    if path == "inference-mode-load":
        with torch.inference_mode():
            fast = esr_models.load("pfdnlite", fused=True, backend="cpu")
            old = fast(x)
            fast.load_state_dict(new)
            got = fast(x)
    elif path == "explicit-repack":
        with torch.inference_mode():
            fast = esr_models.load("pfdnlite", fused=True, backend="cpu")
            old = fast(x)
            for k, p in fast.state_dict().items():
                if p.is_floating_point():
                    p.mul_(1.1)  # inference tensors: no version counter to notice it
            repack_(fast)
            got = fast(x)
    else:
        fast = esr_models.load("pfdnlite", fused=True, backend="cpu")
        call = torch.compile(fast, backend="eager", fullgraph=True) if path == "compiled-call" else fast
        with torch.no_grad():
            old = call(x)
            fast.load_state_dict(new)
            got = call(x)
    assert (old - want).abs().max() > 0.01  # the change is visible
    assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()
    assert all(torch.equal(a, b) for a, b in zip(fast.state_dict().values(), new.values()))


# ---------------------------------------------------------------- (2) pickling a fused model

@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_fused_model_pickles_and_rebuilds_its_packs(how):
    _cpu_backend_or_skip()
    fast = esr_models.load("pfdnlite", fused=True, backend="cpu")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = fast(x)
    if how == "pickle":
        data = pickle.dumps(fast)
        back = pickle.loads(data)
    else:
        buf = io.BytesIO()
        torch.save(fast, buf)
        data = buf.getvalue()
        back = torch.load(io.BytesIO(data), weights_only=False)
    state_bytes = sum(t.numel() * t.element_size() for t in fast.state_dict().values())
    assert len(data) < 1.5 * state_bytes + 100_000  # the packs are not stored, only the weights
    assert back.backend == "cpu"
    assert len({id(m.kernels) for m in back.modules() if hasattr(m, "kernels")}) == 1  # one shared backend
    with torch.no_grad():
        assert torch.equal(back(x), want)
    # and the copy follows its own weights
    new = _other_weights(back)
    back.load_state_dict(new)
    with torch.no_grad():
        assert not torch.equal(back(x), want)


# ---------------------------------------------------------------- (3) 16-bit PPM/PGM and TIFF stay 16-bit

def _pnm16(path: Path, arr: np.ndarray, maxval: int = 65535, plain: bool = False) -> Path:
    """A netpbm file with two-byte samples: P6/P5 (binary) or P3/P2 (plain), written by hand."""
    colour = arr.ndim == 3
    magic = ("P3" if colour else "P2") if plain else ("P6" if colour else "P5")
    head = f"{magic}\n# written by the test\n{arr.shape[1]} {arr.shape[0]}\n{maxval}\n".encode()
    body = (" ".join(map(str, arr.ravel().tolist())) + "\n").encode() if plain else arr.astype(">u2").tobytes()
    path.write_bytes(head + body)
    return path


def _tiff16(path: Path, arr: np.ndarray, order: str = "<", rows_per_strip: int = 3, deflate: bool = False) -> Path:
    """A 16-bit chunky RGB/RGBA TIFF (several strips; deflate if asked), written by hand:
    Pillow cannot write 16-bit colour."""
    import struct
    import zlib

    h, w, spp = arr.shape
    strips = []
    for y in range(0, h, rows_per_strip):
        raw = arr[y:y + rows_per_strip].astype(f"{order}u2").tobytes()
        strips.append(zlib.compress(raw) if deflate else raw)
    n = len(strips)
    entries = 11 + (spp == 4)
    bits_at = 8 + 2 + 12 * entries + 4  # the out-of-line values follow the one IFD
    offs_at = bits_at + 2 * spp
    counts_at = offs_at + 4 * n
    offsets = [counts_at + 4 * n + sum(map(len, strips[:i])) for i in range(n)]
    SHORT, LONG = 3, 4
    tags = [(256, LONG, 1, w), (257, LONG, 1, h), (258, SHORT, spp, bits_at),
            (259, SHORT, 1, 8 if deflate else 1), (262, SHORT, 1, 2),
            (273, LONG, n, offs_at if n > 1 else offsets[0]), (277, SHORT, 1, spp),
            (278, LONG, 1, rows_per_strip), (279, LONG, n, counts_at if n > 1 else len(strips[0])),
            (284, SHORT, 1, 1), (296, SHORT, 1, 1)] + ([(338, SHORT, 1, 2)] if spp == 4 else [])  # 2: alpha
    assert len(tags) == entries
    out = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "IH", 8, entries)
    for tag, typ, count, value in tags:
        inline = typ == SHORT and count == 1
        out += struct.pack(order + "HHI", tag, typ, count)
        out += struct.pack(order + "HH", value, 0) if inline else struct.pack(order + "I", value)
    out += struct.pack(order + "I", 0)
    out += struct.pack(order + f"{spp}H", *([16] * spp))
    out += struct.pack(order + f"{n}I", *offsets) + struct.pack(order + f"{n}I", *map(len, strips))
    path.write_bytes(out + b"".join(strips))
    return path


def _samples(shape, seed=0, maxval=65535):
    # Odd values everywhere: 8 bits cannot hold them, so a truncation cannot pass unnoticed.
    return np.random.default_rng(seed).integers(0, maxval // 2, size=shape, dtype=np.int64) * 2 + 1


@pytest.mark.parametrize("kind", ["P6", "P3-plain", "P6-maxval-1023", "P5", "P2-plain"])
def test_16bit_ppm_and_pgm_are_read_at_16_bits(tmp_path, kind):
    from esr_models.io.images import read_image

    maxval = 1023 if "1023" in kind else 65535
    colour = kind[:2] in ("P6", "P3")
    arr = _samples((5, 7, 3) if colour else (5, 7), maxval=maxval)
    path = _pnm16(tmp_path / ("a.ppm" if colour else "a.pgm"), arr, maxval, plain="plain" in kind)
    img = read_image(path)
    assert img.bit_depth == 16 and img.grayscale == (not colour) and img.alpha is None
    want = torch.from_numpy(arr / maxval).float()
    want = want.permute(2, 0, 1) if colour else want[None].expand(3, -1, -1)
    assert torch.allclose(img.rgb, want, atol=1e-6, rtol=0)


def test_16bit_ppm_over_max_pixels_is_refused_before_reading(tmp_path):
    from esr_models.io.images import ImageReadError, read_image

    path = _pnm16(tmp_path / "a.ppm", _samples((5, 7, 3)))
    with pytest.raises(ImageReadError, match="above the limit"):
        read_image(path, max_pixels=30)


@pytest.mark.parametrize("case", ["rgb-le", "rgba-be"])
def test_16bit_colour_tiff_is_read_at_16_bits(tmp_path, case):
    from esr_models.io.images import read_image

    spp = 4 if case.startswith("rgba") else 3
    arr = _samples((7, 6, spp), seed=2)
    img = read_image(_tiff16(tmp_path / "a.tif", arr, order="<" if case.endswith("le") else ">"))
    assert img.bit_depth == 16 and not img.grayscale
    assert torch.allclose(img.rgb, torch.from_numpy(arr[..., :3] / 65535).float().permute(2, 0, 1), atol=1e-6)
    if spp == 4:
        assert torch.allclose(img.alpha, torch.from_numpy(arr[..., 3:] / 65535).float().permute(2, 0, 1), atol=1e-6)
    else:
        assert img.alpha is None


def test_compressed_16bit_tiff_is_16_bit_or_says_precision_was_reduced(tmp_path):
    from esr_models.io.images import read_image

    arr = _samples((7, 6, 3), seed=3)
    img = read_image(_tiff16(tmp_path / "a.tif", arr, deflate=True))
    if img.bit_depth == 16:  # tifffile installed
        assert torch.allclose(img.rgb, torch.from_numpy(arr / 65535).float().permute(2, 0, 1), atol=1e-6)
    else:
        assert any("precision reduced" in n and "16-bit" in n for n in img.notes), img.notes


def test_cli_writes_a_16bit_png_for_a_16bit_ppm(tmp_path):
    from esr_models.io.images import read_image

    (tmp_path / "in").mkdir()
    src = _pnm16(tmp_path / "in" / "a.ppm", _samples((16, 16, 3)))
    r = esr("upscale", src, "-o", tmp_path / "out", "--model", "pfdnlite")
    assert r.returncode == 0, r.stderr
    out = read_image(tmp_path / "out" / "a_x4.png")
    assert out.bit_depth == 16 and out.rgb.shape == (3, 64, 64)


# ---------------------------------------------------------------- (4) training configs and runs that cannot be right

def _png(path: Path, size: int, seed: int = 0) -> Path:
    from PIL import Image as PILImage

    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    PILImage.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("toml, named", [
    ('model = "pfdnlite"\n[defualts]\nlr = 1e-3\n', "'defualts' (did you mean 'defaults'?)"),
    ('model = "pfdnlite"\n[[stage]]\niters = 2\n', "'stage' (did you mean 'stages'?)"),
    ('model = "pfdnlite"\n[arch]\nchanels = 8\n', "'chanels' (did you mean 'channels'?)"),
    ('model = "pfdnlite"\n[defaults]\nlearning_rate = 1e-3\n', "[defaults]: unknown setting 'learning_rate'"),
    ('model = "pfdnlite"\n[[stages]]\niters = 2\n[[stages]]\npatchh = 32\n', "[[stages]] 2: unknown setting 'patchh'"),
    ('model = "pfdnlite"\nstages = 3\n', "'stages' must be an array of tables"),
    ('model = "pfdnlitee"\n', "model 'pfdnlitee'"),
])
def test_unknown_tables_and_keys_in_a_training_config_are_errors_naming_them(tmp_path, toml, named):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text(toml)
    _png(tmp_path / "train" / "a.png", 64)
    _png(tmp_path / "val" / "a.png", 64)
    r = esr("train", "--config", cfg, "--train-hr", tmp_path / "train", "--val-hr", tmp_path / "val",
            "--out", tmp_path / "run", "--iters", 1, "--num-workers", 0, "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and named in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()


def test_a_config_file_is_checked_as_the_recipes_are():
    from esr_models.training.recipes import RECIPES, ConfigError, check_arch, check_config, load_config

    for name in RECIPES:  # the shipped recipes pass their own check
        cfg = load_config(name)
        check_arch(cfg["model"], cfg.get("arch", {}))
    with pytest.raises(ConfigError, match="'defualts'"):
        check_config({"defualts": {}})


def test_a_run_whose_validation_images_are_all_unusable_is_refused_before_training(tmp_path):
    _png(tmp_path / "train" / "a.png", 64)
    _png(tmp_path / "val" / "small.png", 20)  # PFDNLite x4 needs an HR of at least 28x28
    (tmp_path / "val" / "broken.png").write_bytes(b"not a png")
    r = esr("train", "--model", "pfdnlite", "--train-hr", tmp_path / "train", "--val-hr", tmp_path / "val",
            "--out", tmp_path / "run", "--iters", 1, "--patch", 32, "--batch", 1, "--num-workers", 0, "--no-progress")
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert "none of its 2 validation image(s) can be used" in r.stderr and "small.png (20x20" in r.stderr
    assert "broken.png (unreadable)" in r.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ---------------------------------------------------------------- (5) memory in containers: limit minus working set

def _files(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


MB = 1 << 20


@pytest.mark.parametrize("layout", ["v2", "v2-nested", "v2-no-limit", "v1", "v1-nested", "v1-no-limit"])
def test_cgroup_memory_is_the_limit_minus_the_working_set(tmp_path, layout):
    """Page cache (2 GB of it here, as after reading many files) is not counted as used: the
    kernel reclaims it before it kills anything."""
    from esr_models.infer.memory import cgroup_available_bytes

    root, proc = tmp_path / "cgroup", tmp_path / "proc_self_cgroup"
    proc.write_text("0::/\n")
    if layout.startswith("v2"):
        where = "job/step" if layout == "v2-nested" else ""
        proc.write_text(f"0::/{where}\n")
        _files(root, {"cgroup.controllers": "cpu memory\n"})
        _files(root / where, {
            "memory.max": "max\n" if layout == "v2-no-limit" else f"{4096 * MB}\n",
            "memory.current": f"{3000 * MB}\n",
            "memory.stat": f"anon {900 * MB}\nfile {2048 * MB}\nkernel {52 * MB}\nshmem {100 * MB}\n"
                           f"inactive_file {1500 * MB}\n",
        })
        if layout == "v2-nested":  # a looser limit above does not loosen the inner one
            _files(root / "job", {"memory.max": f"{8192 * MB}\n", "memory.current": f"{3000 * MB}\n",
                                  "memory.stat": f"file {2048 * MB}\nshmem {100 * MB}\n"})
        # working set = 3000 - 2048 + 100 (tmpfs is not reclaimable) = 1052 MB
        want = None if layout == "v2-no-limit" else (4096 - 1052) * MB
    else:
        where = "docker/abc" if layout == "v1-nested" else ""
        proc.write_text(f"4:memory:/{where}\n0::/\n")
        limit = str(2**63 - 4096) if layout == "v1-no-limit" else str(4096 * MB)
        _files(root / "memory" / where, {
            "memory.limit_in_bytes": f"{limit}\n",
            "memory.usage_in_bytes": f"{3000 * MB}\n",
            "memory.stat": f"cache {2100 * MB}\nrss {800 * MB}\nshmem {100 * MB}\n"
                           f"total_cache {2048 * MB}\ntotal_rss {850 * MB}\ntotal_shmem {100 * MB}\n",
        })
        want = None if layout == "v1-no-limit" else (4096 - (3000 - 2048 + 100)) * MB
    assert cgroup_available_bytes(str(root), str(proc)) == want


def test_no_cgroup_files_means_no_cgroup_limit(tmp_path):
    from esr_models.infer.memory import cgroup_available_bytes

    assert cgroup_available_bytes(str(tmp_path / "nothing"), str(tmp_path / "none")) is None


def test_available_bytes_takes_the_cgroup_limit(monkeypatch):
    from esr_models.infer import memory

    monkeypatch.setattr(memory, "cgroup_available_bytes", lambda *a, **k: 123 * MB)
    monkeypatch.delenv("ESR_MAX_MEMORY_MB", raising=False)
    assert memory.available_bytes(torch.device("cpu")) <= 123 * MB


# ---------------------------------------------------------------- (6) the scale comes from the model everywhere

@pytest.fixture
def x2_checkpoint(tmp_path):
    from esr_models.arch.pfdnlite import PFDNLite

    torch.manual_seed(0)
    ckpt = tmp_path / "x2.pth"
    torch.save(PFDNLite(scale=2).state_dict(), ckpt)
    return ckpt


@pytest.mark.parametrize("how", ["whole", "tiled", "ray"])
def test_a_x2_model_writes_x2_images_named_x2(tmp_path, x2_checkpoint, how):
    from esr_models.io.images import read_image

    if how == "ray":
        pytest.importorskip("ray")
    src = _png(tmp_path / "in" / "a.png", 24)
    # An earlier x2 output among the inputs is recognised at x2 (by its name and its size).
    _png(tmp_path / "in" / "b.png", 20, seed=1)
    _png(tmp_path / "in" / "b_x2.png", 40, seed=2)
    extra = {"whole": [], "tiled": ["--tile", 12, "--tile-overlap", 2],
             "ray": ["--ray", "--ray-workers", 1]}[how]
    r = esr("upscale", tmp_path / "in", "-o", tmp_path / "in", "--model", x2_checkpoint, "-q", *extra,
            env={"OMP_NUM_THREADS": "1"} if how == "ray" else None)
    assert r.returncode == 0, r.stderr
    # a.png upscaled; b_x2.png is b.png's earlier output (exactly 2x its size), so both are skipped
    assert "1 upscaled, 2 skipped, 0 failed" in r.stderr, r.stderr
    assert "b_x2.png: an output of an earlier run" in r.stderr
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png", "a_x2.png", "b.png", "b_x2.png"]
    assert read_image(tmp_path / "in" / "a_x2.png").rgb.shape == (3, 48, 48)
    assert not list((tmp_path / "in").glob("*_x4*"))
    assert src.exists()


def test_an_explicit_suffix_is_kept_with_a_x2_model(tmp_path, x2_checkpoint):
    _png(tmp_path / "in" / "a.png", 16)
    r = esr("upscale", tmp_path / "in" / "a.png", "-o", tmp_path / "out", "--model", x2_checkpoint, "-q",
            "--suffix", "_big")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_big.png"]


def test_a_x2_model_upscales_video_frames_x2(tmp_path, x2_checkpoint):
    av = pytest.importorskip("av")
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for i in range(2):
            arr = np.full((24, 32, 3), 40 * i, np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)
    r = esr("upscale", clip, "-o", tmp_path / "out", "--model", x2_checkpoint, "-q")
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "out" / "clip_x2.mp4")) as f:
        v = f.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (64, 48)
