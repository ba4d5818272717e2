"""The models' input contract: reference and fused models validate input identically, with a
clear error (issue #8: the fused path took uint8 and returned values around 3e6), and the
fused forward is inference-only."""
from __future__ import annotations

import pytest
import torch

import esr_models
from esr_models.arch.layers import InputError, InputTooSmallError

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def pairs(models):
    import esr_kernels

    if not esr_kernels.available_backends()["cpu_extension"]:
        pytest.skip("the native CPU extension is not built")
    return {name: (models[name], esr_models.load(name, fused=True, backend="cpu")) for name in models}


BAD_INPUTS = {
    "uint8": (lambda: torch.randint(0, 256, (1, 3, 20, 20), dtype=torch.uint8), InputError, "x.float() / 255"),
    "float64": (lambda: torch.rand(1, 3, 20, 20, dtype=torch.float64), InputError, "torch.float64"),
    "int64": (lambda: torch.randint(0, 2, (1, 3, 20, 20)), InputError, "floating-point"),
    "3-D": (lambda: torch.rand(3, 20, 20), InputError, "(N, 3, H, W)"),
    "4 channels": (lambda: torch.rand(1, 4, 20, 20), InputError, "(N, 3, H, W)"),
    "other device": (lambda: torch.rand(1, 3, 20, 20, device="meta"), InputError, "meta"),
    "too small": (lambda: torch.rand(1, 3, 20, 6), InputTooSmallError, "at least"),
    "not a tensor": (lambda: [[0.5]], InputError, "torch.Tensor"),
    # Issue 27: NaN and -inf passed (the whole output NaN); +inf was refused as "0-255 pixels".
    "NaN": (lambda: _with(float("nan")), InputError, "takes finite values in [0, 1]; this input holds NaN"),
    "-inf": (lambda: _with(float("-inf")), InputError, "takes finite values in [0, 1]; this input holds -inf"),
    "+inf": (lambda: _with(float("inf")), InputError, "takes finite values in [0, 1]; this input holds inf"),
}


def _with(value: float, size: int = 20) -> torch.Tensor:
    """A valid input of size x size pixels but for one value."""
    x = torch.rand(1, 3, size, size)
    x[0, 1, 7, 11] = value
    return x


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_reference_and_fused_reject_bad_input_alike(pairs, name, case):
    make, error, fragment = BAD_INPUTS[case]
    x = make()
    if case == "too small" and esr_models.min_input_size(pairs[name][0]) == 1:
        x = torch.rand(1, 3, 20, 0)  # SPAN has no pooling: any size but an empty one
    messages = []
    for model in pairs[name]:
        with torch.no_grad(), pytest.raises(error) as info:
            model(x)
        messages.append(str(info.value))
    if case == "too small" and name == "pfdnlite":
        pass  # PFDNLite's minimum is 7: 20x6 is too small for it as well
    assert fragment in messages[0] and messages[0] == messages[1]


def test_fused_rejects_a_dtype_its_backend_does_not_run(pairs):
    _, fused = pairs["rlfn"]
    fused_f64 = esr_models.load("rlfn", fused=True, backend="cpu").to(torch.float64)
    with torch.no_grad(), pytest.raises(InputError, match="not torch.float64"):
        fused_f64(torch.rand(1, 3, 20, 20, dtype=torch.float64))


def test_fused_forward_is_inference_only_and_says_so(pairs):
    ref, fused = pairs["pfdnlite"]
    x = torch.rand(1, 3, 16, 16)
    y = fused(x)  # a plain call works: the fused model's parameters do not require grad
    assert not y.requires_grad
    with pytest.raises(RuntimeError, match="inference-only"):
        fused(x.clone().requires_grad_())
    # the reference stays differentiable
    ref_copy = esr_models.load("pfdnlite")
    xg = x.clone().requires_grad_()
    ref_copy(xg).sum().backward()
    assert xg.grad is not None and ref_copy.head.weight.grad is not None
    assert torch.allclose(y, ref_copy(x).detach(), atol=1e-5)


@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_fused_follows_weight_changes_after_load(pairs, name):
    """load_state_dict or an in-place edit after fusing: the packs are made again, never stale."""
    import copy

    fused = copy.deepcopy(pairs[name][1])   # fused models deep-copy (EMA, model copies)
    ref = esr_models.load(name)
    x = torch.rand(1, 3, 20, 24)
    halved = {k: v * 0.5 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    fused.load_state_dict(halved)
    ref.load_state_dict(halved)
    with torch.no_grad():
        assert (fused(x) - ref(x)).abs().max() < 1e-5
        for p, q in zip(fused.parameters(), ref.parameters()):
            p.mul_(1.25)
            q.mul_(1.25)
        assert (fused(x) - ref(x)).abs().max() < 1e-5


def test_0_255_input_is_refused_alike(pairs):
    ref, fused = pairs["pfdnlite"]
    x = torch.rand(1, 3, 16, 16) * 255
    for model in (ref, fused):
        with torch.no_grad(), pytest.raises(InputError, match="divide by 255"):
            model(x)


@pytest.mark.parametrize("fused", [False, True], ids=["reference", "fused-cpu"])
def test_the_value_check_runs_under_torch_compile(pairs, fused):
    """Issue 27: under torch.compile the range check was skipped (is_compiling) and 0-255 input
    gave ~1e7. It is part of the graph (torch._assert_async: no graph break, so fullgraph=True
    traces it), raising a RuntimeError with the message. aot_eager: dynamo and AOT autograd trace
    the check as inductor would, in seconds (inductor's C++ build takes minutes here)."""
    model = pairs["pfdnlite"][int(fused)]
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (compiled(x) - model(x)).abs().max() < 1e-5  # valid input: compiles and runs
        for bad in (x * 255, _with(float("nan"), 16), _with(float("-inf"), 16)):
            with pytest.raises(RuntimeError, match=r"PFDNLite takes finite values in \[0, 1\].*divide by 255"):
                compiled(bad)
    torch._dynamo.reset()


def test_fuse_auto_resolves_like_load(models):
    """fuse_(model) defaults to "auto": the backend load(fused=True) would choose for the
    model's device and dtype; where none applies, a warning and the model stays the reference."""
    from esr_kernels import policy

    model = esr_models.load("rlfn")
    replaced = esr_models.fuse_(model)
    expected = "cpu" if policy.cpu_auto_reason() is None else None  # any CPU, any ISA level
    if expected:
        assert replaced and model._esr_fused_backend == "cpu"
        assert esr_models.fuse_(model) == {}  # idempotent
        with pytest.raises(ValueError, match="already fused"):
            esr_models.fuse_(model, "triton")
    f64 = esr_models.load("rlfn", dtype=torch.float64)  # no backend runs float64
    with pytest.warns(UserWarning, match="stays the reference"):
        assert esr_models.fuse_(f64) == {}


def test_backends_keep_the_import_error(monkeypatch):
    from esr_kernels import extensions, policy

    def broken(name):
        raise ImportError("undefined symbol: _ZN3c10 (built against another torch)")

    monkeypatch.setattr(extensions.importlib, "import_module", broken)
    # A fresh record, so that the error does not outlive the test (policy reads the same dict).
    monkeypatch.setattr(extensions, "IMPORT_ERRORS", {})
    monkeypatch.setattr(policy, "IMPORT_ERRORS", extensions.IMPORT_ERRORS)
    assert "another torch" in policy.extension_error("_C_cpu")
    with pytest.raises(RuntimeError, match="import failed: ImportError: undefined symbol"):
        policy.resolve_backend("cpu", torch.device("cpu"))
