"""The scale comes from the model everywhere (issue #18): output names and sizes (whole, tiled,
Ray), earlier outputs recognised at that scale, an explicit suffix kept, video frames, eval."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.shared  # the upstream weights


# ---------------------------------------------------------------- upscale: names, sizes, earlier outputs, video

@pytest.fixture
def x2_checkpoint(tmp_path):
    from esr_models.arch.pfdnlite import PFDNLite

    torch.manual_seed(0)
    ckpt = tmp_path / "x2.pth"
    torch.save(PFDNLite(scale=2).state_dict(), ckpt)
    return ckpt


@pytest.mark.parametrize("how", ["whole", "tiled", "ray"])
def test_a_x2_model_writes_x2_images_named_x2(run_esr, random_png, tmp_path, x2_checkpoint, how):
    from esr_models.io.images import read_image

    if how == "ray":
        pytest.importorskip("ray")
    src = random_png(tmp_path / "in" / "a.png", size=(24, 24))
    # An earlier x2 output among the inputs is recognised at x2 (by its name and its size).
    random_png(tmp_path / "in" / "b.png", seed=1, size=(20, 20))
    random_png(tmp_path / "in" / "b_x2.png", seed=2, size=(40, 40))
    extra = {"whole": [], "tiled": ["--tile", 12, "--tile-overlap", 2],
             "ray": ["--ray", "--ray-workers", 1]}[how]
    r = run_esr("upscale", tmp_path / "in", "-o", tmp_path / "in", "--model", x2_checkpoint, "-q", *extra,
                env={"OMP_NUM_THREADS": "1"} if how == "ray" else None)
    assert r.returncode == 0, r.stderr
    # a.png upscaled; b_x2.png is b.png's earlier output (exactly 2x its size), so both are skipped
    assert "1 upscaled, 2 skipped, 0 failed" in r.stderr, r.stderr
    assert "b_x2.png: an output of an earlier run" in r.stderr
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["a.png", "a_x2.png", "b.png", "b_x2.png"]
    assert read_image(tmp_path / "in" / "a_x2.png").rgb.shape == (3, 48, 48)
    assert not list((tmp_path / "in").glob("*_x4*"))
    assert src.exists()


def test_an_explicit_suffix_is_kept_with_a_x2_model(run_esr, random_png, tmp_path, x2_checkpoint):
    random_png(tmp_path / "in" / "a.png", size=(16, 16))
    r = run_esr("upscale", tmp_path / "in" / "a.png", "-o", tmp_path / "out", "--model", x2_checkpoint, "-q",
                "--suffix", "_big")
    assert r.returncode == 0, r.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_big.png"]


def test_a_x2_model_upscales_video_frames_x2(run_esr, tmp_path, x2_checkpoint):
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
    r = run_esr("upscale", clip, "-o", tmp_path / "out", "--model", x2_checkpoint, "-q")
    assert r.returncode == 0, r.stderr
    with av.open(str(tmp_path / "out" / "clip_x2.mp4")) as f:
        v = f.streams.video[0]
        assert (v.codec_context.width, v.codec_context.height) == (64, 48)


# ---------------------------------------------------------------- eval

def test_eval_uses_the_checkpoints_scale(run_esr, random_png, tmp_path):
    import json

    from esr_models.arch.pfdnlite import PFDNLite

    torch.manual_seed(0)
    ckpt = tmp_path / "x2.pth"
    torch.save(PFDNLite(scale=2).state_dict(), ckpt)
    hr = tmp_path / "hr"
    random_png(hr / "a.png", size=(40, 40))
    proc = run_esr("eval", "--model", ckpt, "--hr", hr, "--no-ssim", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["images"] == 1
