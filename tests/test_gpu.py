"""What only a GPU can show: torch.compile through inductor, CUDA-graph capture, and
int64 offsets at sizes past 2^31 elements (see also test_kernels.py)."""
from __future__ import annotations

import pytest
import torch

import esr_models

pytestmark = [pytest.mark.gpu, pytest.mark.triton, pytest.mark.shared]


@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_compile_max_autotune_fullgraph_matches_eager(name):
    model = esr_models.load(name, device="cuda", dtype=torch.float16, fused=True)
    x = torch.rand(1, 3, 96, 128, device="cuda", dtype=torch.float16)
    with torch.inference_mode():
        eager = model(x)
        compiled = torch.compile(model, mode="max-autotune", fullgraph=True)(x)
    assert (compiled.float() - eager.float()).abs().max() <= 1e-3


@pytest.mark.parametrize("name", esr_models.MODEL_NAMES)
def test_cuda_graph_capture_replays_the_same_answer(name):
    model = esr_models.load(name, device="cuda", fused=True)
    static_x = torch.rand(1, 3, 64, 80, device="cuda")
    with torch.inference_mode():
        expected = model(static_x).clone()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = model(static_x)
        static_x.copy_(torch.rand_like(static_x))
        graph.replay()
        fresh = model(static_x)
        torch.cuda.synchronize()
    assert torch.equal(out, fresh)
    assert not torch.equal(out, expected)


@pytest.mark.slow
def test_fused_at_real_size_540x960():
    for name in esr_models.MODEL_NAMES:
        ref = esr_models.load(name, device="cuda")
        fused = esr_models.load(name, device="cuda", fused=True)
        x = torch.rand(1, 3, 540, 960, device="cuda")
        with torch.inference_mode():
            assert (fused(x) - ref(x)).abs().max() <= 1e-4, name
