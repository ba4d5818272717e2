"""ONNX export (esr_models.interop.onnx, ``esr export --onnx``): ONNX Runtime reproduces the
float32 reference to 1e-4 for every model, at odd sizes and another batch size (dynamic axes)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.shared
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install 'esr-kernels[onnx]')")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'esr-kernels[onnx]')")

import esr_models  # noqa: E402
from esr_models.arch import layers  # noqa: E402
from esr_models.interop.onnx import (DEFAULT_OPSET, FLOAT32_TOLERANCE, OnnxExportError, _trace_export,  # noqa: E402
                                    export_onnx, image_like, run_onnxruntime)
from esr_models.io.outputs import OutputExistsError, TEMP_PREFIX  # noqa: E402

NAMES = ["ifadnet", "pfdnlite", "rlfn", "span", "spantiny"]
# SPAN maps uniform noise far outside [0, 1] (outputs up to ~70), where float32 rounding alone
# differs by ~2e-3 between runtimes; it is checked on image-like inputs (interop.onnx.image_like).
IMAGE_LIKE = {"span", "spantiny"}
# Odd H and W, and a batch of 2 at another size: neither is the export's example (1x3x64x64).
SHAPES = [(1, 3, 47, 59), (2, 3, 32, 40)]


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    d = tmp_path_factory.mktemp("onnx")
    return {n: export_onnx(models[n], d / f"{n}.onnx", verify=False) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_onnxruntime_matches_reference(models, exported, name):
    model = models[name]
    shapes = SHAPES + [(1, 3, model.min_size, model.min_size + 2)]  # the smallest input it takes
    gen = torch.Generator().manual_seed(1)
    for shape in shapes:
        x = image_like(shape, gen) if name in IMAGE_LIKE else torch.rand(shape)
        with torch.no_grad():
            ref = model(x)
        got = torch.from_numpy(run_onnxruntime(exported[name].path, x))
        assert got.shape == ref.shape == (shape[0], 3, 4 * shape[2], 4 * shape[3])
        err = (got - ref).abs().max().item()
        assert err <= FLOAT32_TOLERANCE, f"{name} {shape}: max abs error {err:.3g}"


@pytest.mark.parametrize("name", NAMES)
def test_graph_is_dynamic_and_self_describing(models, exported, name):
    proto = onnx.load(str(exported[name].path))
    onnx.checker.check_model(proto)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [DEFAULT_OPSET]
    (inp,), (out,) = proto.graph.input, proto.graph.output
    assert inp.name == "lr" and out.name == "sr"
    dims = inp.type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
    assert dims[1].dim_value == 3
    meta = {p.key: p.value for p in proto.metadata_props}
    assert meta["scale"] == "4" and meta["min_input_size"] == str(models[name].min_size)
    assert meta["architecture"] == type(models[name]).__name__


def test_ifadnet_ops_export_as_intended(exported):
    """The ops that could go wrong in IFADNet's export are the intended ONNX ones."""
    nodes = onnx.load(str(exported["ifadnet"].path)).graph.node
    attrs = lambda n: {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}  # noqa: E731
    pads = [n for n in nodes if n.op_type == "Pad"]
    assert pads and all(attrs(n)["mode"] == b"reflect" for n in pads)  # blueprint convs only
    pools = [attrs(n) for n in nodes if n.op_type == "MaxPool"]
    assert pools and all(p["kernel_shape"] == [7, 7] and p["strides"] == [3, 3] and not any(p.get("pads", []))
                         for p in pools)
    resizes = [attrs(n) for n in nodes if n.op_type == "Resize"]
    assert resizes and all(r["mode"] == b"linear" and r["coordinate_transformation_mode"] == b"half_pixel"
                           for r in resizes)
    (d2s,) = [attrs(n) for n in nodes if n.op_type == "DepthToSpace"]
    assert d2s["blocksize"] == 4 and d2s["mode"] == b"CRD"  # torch.pixel_shuffle's channel order


class _Shuffle(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tail = layers.PixelShuffleTail(8, 4, repeat_image=True)

    def forward(self, x):
        return self.tail(x, x[:, :3])


@pytest.mark.parametrize("block", ["reflect_pad_conv", "esa", "local_attention", "pixel_shuffle"])
def test_each_op_exports_correctly(tmp_path, block):
    """Each block alone, at odd sizes the export never saw (dynamic H and W)."""
    module = {"reflect_pad_conv": lambda: layers.BlueprintConv(8), "esa": lambda: layers.ESA(8, 4),
              "local_attention": lambda: layers.LocalAttention(8, 4), "pixel_shuffle": _Shuffle}[block]().eval()
    path = tmp_path / f"{block}.onnx"
    with torch.no_grad():
        _trace_export(module, torch.rand(1, 8, 32, 32), path, DEFAULT_OPSET, dynamic=True)
        for shape in [(1, 8, 15, 17), (2, 8, 33, 21)]:
            x = torch.rand(shape)
            got = torch.from_numpy(run_onnxruntime(path, x))
            assert (got - module(x)).abs().max().item() <= 1e-5


def test_fixed_shape_export_and_argument_checks(models, tmp_path):
    res = export_onnx(models["pfdnlite"], tmp_path / "fixed.onnx", dynamic=False, input_shape=(1, 3, 20, 24))
    assert res.max_abs_error is not None and res.max_abs_error <= FLOAT32_TOLERANCE
    dims = onnx.load(str(res.path)).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 20, 24]
    with pytest.raises(ValueError, match="opset"):
        export_onnx(models["pfdnlite"], tmp_path / "x.onnx", opset=10)
    with pytest.raises(ValueError, match="input_shape"):
        export_onnx(models["pfdnlite"], tmp_path / "x.onnx", dynamic=False)
    with pytest.raises(ValueError, match=">= 15"):
        export_onnx(models["rlfn"], tmp_path / "x.onnx", dynamic=False, input_shape=(1, 3, 14, 20))
    with pytest.raises(ValueError, match="bfloat16"):
        export_onnx(esr_models.load("pfdnlite", dtype=torch.bfloat16), tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_never_overwrites_unasked_and_never_leaves_a_bad_file(models, tmp_path, monkeypatch):
    dst = tmp_path / "m.onnx"
    dst.write_bytes(b"keep me")
    with pytest.raises(OutputExistsError):
        export_onnx(models["pfdnlite"], dst, verify=False)
    assert dst.read_bytes() == b"keep me"
    # A graph that fails the check is never moved into place, and no temp file is left.
    import esr_models.interop.onnx as mod

    monkeypatch.setattr(mod, "verify_onnx", lambda *a, **k: 0.5)
    with pytest.raises(OnnxExportError, match="differs"):
        export_onnx(models["pfdnlite"], dst, verify=True, overwrite=True)
    assert dst.read_bytes() == b"keep me"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(TEMP_PREFIX)]


def test_cli_export_refuses_to_overwrite_unless_asked(run_esr, models, tmp_path):
    out = tmp_path / "out.onnx"
    proc = run_esr("export", "pfdnlite", "--onnx", out)
    assert proc.returncode == 0, proc.stderr
    assert "max abs error" in proc.stdout
    x = torch.rand(1, 3, 21, 19)
    with torch.no_grad():
        assert (torch.from_numpy(run_onnxruntime(out, x)) - models["pfdnlite"](x)).abs().max() <= FLOAT32_TOLERANCE
    out.write_bytes(b"not a model")  # so that replacing it is visible
    proc = run_esr("export", "pfdnlite", "--onnx", out)
    assert proc.returncode == 2 and "exists" in proc.stderr and "--overwrite" in proc.stderr
    assert out.read_bytes() == b"not a model"
    from esr_models.cli import main  # in-process: a third interpreter start adds nothing

    assert main(["export", "pfdnlite", "--onnx", str(out), "--overwrite"]) == 0
    onnx.checker.check_model(onnx.load(str(out)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.onnx"]  # no temp files left


def test_cli_usage_errors_and_checkpoint_export(models, tmp_path, capsys):
    from esr_models.cli import main

    assert main(["export", "pfdnlite"]) == 2
    assert "nothing to export" in capsys.readouterr().err
    assert main(["export", "pfdnlite", "--onnx", str(tmp_path / "a.onnx"), "--opset", "9"]) == 2
    assert main(["export", "no-such-model", "--onnx", str(tmp_path / "a.onnx")]) == 2
    assert main(["export", "pfdnlite", "-o", str(tmp_path / "a"), "--onnx", str(tmp_path / "a")]) == 2
    assert not list(tmp_path.iterdir())
    if importlib.util.find_spec("esr_models.training.deploy_checkpoint") is None:
        pytest.skip("esr_models.training.deploy_checkpoint is not in this install")
    # -o and --onnx together; then the written checkpoint exports as the same model.
    pth, onx = tmp_path / "p.pth", tmp_path / "p.onnx"
    assert main(["export", "pfdnlite", "-o", str(pth), "--onnx", str(onx)]) == 0, capsys.readouterr().err
    x = torch.rand(1, 3, 17, 23)
    with torch.no_grad():
        ref = models["pfdnlite"](x)
        assert torch.equal(esr_models.load(pth)(x), ref)  # same class and weights: same computation
    assert (torch.from_numpy(run_onnxruntime(onx, x)) - ref).abs().max() <= FLOAT32_TOLERANCE
    assert main(["export", str(pth), "--onnx", str(tmp_path / "again.onnx")]) == 0


def test_benchmark_provider_uses_this_export(monkeypatch):
    """benchmarks/providers.py exports through export_onnx (one code path) and runs."""
    path = Path(__file__).resolve().parents[2] / "benchmarks" / "providers.py"
    spec = importlib.util.spec_from_file_location("_esr_bench_providers", path)
    providers = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, providers)  # dataclasses look their module up
    spec.loader.exec_module(providers)
    import esr_models.interop.onnx as mod

    calls = []
    real = mod.export_onnx
    monkeypatch.setattr(mod, "export_onnx", lambda *a, **k: calls.append(k) or real(*a, **k))
    prov = next(p for p in providers.PROVIDERS if p.name == "onnxruntime_fp32")
    run = providers.build_runner(prov, "pfdnlite", (1, 3, 24, 20), torch.device("cpu"))
    run()
    assert calls and calls[0]["dynamic"] is True
