"""The benchmark harness's field of providers, its Set5 PSNR-change helper, the frontier chart
and the CPU ISA record (benchmarks/: providers.py, quality.py, plot_frontier.py, machine.py).
Fast, CPU only: no benchmark runs here."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch

from benchmarks import machine, quality
from benchmarks.bench_paired import PAIRINGS
from benchmarks.providers import PROVIDERS

NEW_CPU_PROVIDERS = {"openvino_default", "compile_fp32", "compile_bf16", "fused_bf16"}


def test_providers_include_the_whole_field():
    names = {p.name for p in PROVIDERS}
    assert NEW_CPU_PROVIDERS <= names
    assert {"fused_fp32", "eager_fp32_channels_last", "onnxruntime_fp32", "openvino_fp32"} <= names
    # The CPU pairing times them all, with fused_fp32 first: the denominator of every ratio.
    assert PAIRINGS["cpu"][0] == "fused_fp32" and NEW_CPU_PROVIDERS <= set(PAIRINGS["cpu"])
    by_name = {p.name: p for p in PROVIDERS}
    assert by_name["compile_bf16"].autocast == torch.bfloat16
    assert by_name["openvino_default"].ov_precision is None and by_name["openvino_fp32"].ov_precision == "f32"


@pytest.fixture()
def tiny_hr(tmp_path):
    """One 64x48 HR image: smooth gradients and an edge, so a x4 model does better than noise."""
    from PIL import Image

    yy, xx = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 48), indexing="ij")
    img = torch.stack([xx, yy, (xx > 0.5).float() * 0.6 + 0.2]) * 255
    Image.fromarray(img.round().byte().permute(1, 2, 0).numpy()).save(tmp_path / "tiny.png")
    return tmp_path


def _bicubic_x4(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, scale_factor=4, mode="bicubic", align_corners=False)


def test_psnr_change_is_zero_against_itself_and_negative_when_degraded(tiny_hr):
    """The helper through the project's evaluation protocol: the same upscaler scores exactly
    its reference (0 dB); a degraded output (offset and noise) scores below it."""
    ref = quality.evaluate(_bicubic_x4, tiny_hr)
    same = quality.psnr_change(_bicubic_x4, ref, tiny_hr)
    assert same["psnr_change_db"] == 0.0 and same["psnr_y_change_db"] == 0.0
    assert same["psnr_db"] == pytest.approx(ref["psnr"]) and same["images"] == 1

    gen = torch.Generator().manual_seed(0)
    degraded = lambda x: _bicubic_x4(x) + 0.03 + 0.02 * torch.randn(_bicubic_x4(x).shape, generator=gen)  # noqa: E731
    worse = quality.psnr_change(degraded, ref, tiny_hr)
    assert worse["psnr_change_db"] < -0.5 and worse["psnr_y_change_db"] < -0.5


def test_provider_psnr_change_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("ESR_BENCH_PSNR", "0")
    assert quality.provider_psnr_change("x", "rlfn", _bicubic_x4) == {"skipped": "ESR_BENCH_PSNR=0"}


def test_cpu_record_has_the_isa_keys():
    rec = machine.cpu_record()
    assert {"running", "running_level", "cpu_level", "compiled", "requested", "isa_error", "cpu_model",
            "torch_cpu_capability", "threads", "env"} <= set(rec)
    assert rec["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert rec["threads"] == torch.get_num_threads() and rec["cpu_model"]
    json.dumps(rec)  # it goes into the benchmark JSON as is


def _synthetic_result() -> dict:
    def prov(ms, ratio, change, **info):
        return {"median_ms": ms, "fused_speedup": ratio, "info": info,
                "quality": {"psnr_change_db": change} if change is not None else {"skipped": "off"}}
    row = {"model": "rlfn", "size": "64x64", "fused": "fused_fp32", "device": "cpu (test)",
           "providers": {"fused_fp32": prov(10.0, 1.0, 0.0, backend="cpu"),
                         "openvino_default": prov(7.0, 0.7, -0.014, precision="bf16"),
                         "compile_bf16": prov(7.5, 0.75, None)}}
    return {"machine_info": {"esr_cpu": machine.cpu_record()},
            "benchmarks": [{"extra_info": row}, {"extra_info": {**row, "size": "32x32"}},
                           {"extra_info": {"model": "rlfn", "provider": "x"}}]}  # a bench_models row: not drawn


def test_plot_frontier_draws_a_png(tmp_path):
    if importlib.util.find_spec("matplotlib") is None:
        pytest.skip("matplotlib is not installed (pip install matplotlib)")
    from benchmarks import plot_frontier

    src = tmp_path / "paired.json"
    src.write_text(json.dumps(_synthetic_result()))
    for extra in ([], ["--ratio"]):
        out = tmp_path / f"chart{len(extra)}.png"
        assert plot_frontier.main([str(src), "-o", str(out), *extra]) == 0
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
    drawn, missing = plot_frontier.points(_synthetic_result()["benchmarks"][0]["extra_info"], ratio=False)
    assert [d[0] for d in drawn] == ["fused_fp32", "openvino_default (bf16)"] and missing == ["compile_bf16"]
    assert drawn[1][1] == pytest.approx(0.014)  # a loss is drawn as a positive number of dB


def test_plot_frontier_says_when_the_json_has_no_paired_rows(tmp_path):
    from benchmarks import plot_frontier

    src = tmp_path / "models.json"
    src.write_text(json.dumps({"benchmarks": [{"extra_info": {"model": "rlfn", "provider": "x"}}]}))
    with pytest.raises(SystemExit, match="no bench_paired rows"):
        plot_frontier.main([str(src), "-o", str(tmp_path / "x.png")])
