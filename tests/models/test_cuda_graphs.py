"""Per-shape CUDA graphs of fused models (esr_models/fused/graphs.py; issue 28, item 5).

The bookkeeping runs here on CPU with a stand-in capture (a "graph" whose replay runs the
captured forward on its static input, as a CUDA graph replays its kernels): first forward of a
shape eager, the second captures, later ones replay with the input copied in and the output
copied out; a changed shape; the least recently used shape dropped; new weights drop the
graphs; the opt-outs. The real capture and replay run on a GPU in tests/kernels/test_gpu.py."""
from __future__ import annotations

import copy
import io

import pytest
import torch

import esr_models
from esr_models.fused import graphs as G

pytestmark = pytest.mark.shared


class _StandInGraph:
    def __init__(self, forward, static_x, out):
        self.forward, self.static_x, self.out = forward, static_x, out
        self.replays = 0

    def replay(self):
        self.replays += 1
        self.out.copy_(self.forward(self.static_x))


@pytest.fixture
def stand_in(monkeypatch):
    """CPU tensors count as eligible; captures are recorded stand-ins."""
    made = []

    def capture(forward, static_x):
        out = forward(static_x)
        made.append(_StandInGraph(forward, static_x, out))
        return made[-1], out

    monkeypatch.setattr(G.ShapeGraphs, "eligible",
                        lambda self, x: self.enabled and isinstance(x, torch.Tensor) and G.graphs_enabled_by_env())
    monkeypatch.setattr(G.ShapeGraphs, "capture", staticmethod(capture))
    monkeypatch.delenv(G.ENV_VAR, raising=False)
    return made


@pytest.fixture(scope="module")
def rlfn():
    """A fused model and the same without graphs: a replay runs the same kernels on the same
    values, so the two must be equal, bit for bit."""
    fused = esr_models.load("rlfn", fused=True, backend="cpu")
    return fused, esr_models.set_cuda_graphs(copy.deepcopy(fused), False)


def _img(h=20, w=24, seed=0):
    return torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_eager_then_capture_then_replay_with_fresh_inputs(rlfn, stand_in):
    fused, ref = rlfn
    fused = copy.deepcopy(fused)  # its own graphs
    with torch.inference_mode():
        outs = [fused(_img(seed=i)) for i in range(4)]
        refs = [ref(_img(seed=i)) for i in range(4)]
    assert len(stand_in) == 1 and stand_in[0].replays == 3  # eager, capture + replay, replay, replay
    for out, r in zip(outs, refs):
        assert torch.equal(out, r)
    # each call returns its own tensor, not the graph's buffer that the next replay overwrites
    assert len({o.data_ptr() for o in outs}) == 4
    assert all(o.data_ptr() != stand_in[0].out.data_ptr() for o in outs)


def test_a_new_shape_gets_its_own_graph_and_the_oldest_goes(rlfn, stand_in):
    fused, ref = rlfn
    fused = copy.deepcopy(fused)
    graphs = G.graphs_of(fused)
    shapes = [(20, 24 + 2 * i) for i in range(G.MAX_GRAPHS + 1)]
    with torch.inference_mode():
        for hw in shapes:
            for seed in (0, 1):
                out = fused(_img(*hw, seed=seed))
                assert torch.equal(out, ref(_img(*hw, seed=seed)))
    assert len(stand_in) == len(shapes)
    assert len(graphs.graphs) == G.MAX_GRAPHS
    assert all(k[0] != (1, 3, *shapes[0]) for k in graphs.graphs)  # the least recently used dropped


def test_new_weights_drop_the_graphs(rlfn, stand_in):
    fused, ref = rlfn
    fused, ref = copy.deepcopy(fused), copy.deepcopy(ref)
    x = _img()
    with torch.inference_mode():
        before = fused(x)
        fused(x)
    assert len(stand_in) == 1
    state = {k: v * 0.9 if v.is_floating_point() else v for k, v in ref.state_dict().items()}
    ref.load_state_dict(state)
    fused.load_state_dict(state)
    with torch.inference_mode():
        out = fused(x)
        assert torch.equal(out, ref(x)) and not torch.equal(out, before)
    assert not G.graphs_of(fused).graphs  # dropped, not replayed with the old packs


def test_opt_outs(rlfn, stand_in, monkeypatch):
    fused, _ = rlfn
    fused = copy.deepcopy(fused)
    x = _img()
    esr_models.set_cuda_graphs(fused, False)
    with torch.inference_mode():
        fused(x), fused(x), fused(x)
    assert not stand_in
    esr_models.set_cuda_graphs(fused, True)
    monkeypatch.setenv(G.ENV_VAR, "0")
    with torch.inference_mode():
        fused(x), fused(x)
    assert not stand_in
    monkeypatch.setenv(G.ENV_VAR, "yes")
    with pytest.raises(ValueError, match="ESR_CUDA_GRAPHS='yes'"):
        G.graphs_enabled_by_env()
    with pytest.raises(ValueError, match="not a fused model"):
        esr_models.set_cuda_graphs(esr_models.load("rlfn"), False)


def test_cpu_tensors_never_capture_and_copies_and_pickles_start_empty(rlfn):
    fused, _ = rlfn
    graphs = G.graphs_of(fused)
    with torch.inference_mode():
        fused(_img()), fused(_img())
    assert not graphs.graphs and not graphs.seen  # the real eligibility: CUDA tensors only
    graphs.seen.add("stale")
    clone = copy.deepcopy(fused)
    assert G.graphs_of(clone) is not graphs and not G.graphs_of(clone).seen
    assert clone.forward.graphs is G.graphs_of(clone) and clone.forward.model is clone
    buf = io.BytesIO()
    torch.save(fused, buf)
    loaded = torch.load(io.BytesIO(buf.getvalue()), weights_only=False)
    assert not G.graphs_of(loaded).seen and loaded.forward.model is loaded
    graphs.seen.clear()


@pytest.mark.parametrize("var,value", [(G.ENV_VAR, "2"), ("ESR_TRITON_CONV", "v3")])
def test_the_command_refuses_a_bad_setting(run_esr, var, value):
    r = run_esr("info", env={var: value})
    assert r.returncode == 2 and f"{var}={value!r}" in r.stderr
