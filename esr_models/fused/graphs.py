"""CUDA graphs per input shape for fused models (issue 28, item 5).

A fused model's forward is a fixed sequence of kernel launches for a given input shape, dtype
and layout; on a GPU the host's launch overhead is part of every forward (~0.7-1.1 ms on the
H200, 2026-11-28). So a fused model on CUDA runs, by default, through ``ShapeGraphs``:

- the first forward of a shape runs eagerly (Triton compiles, allocations: nothing captured);
- the second captures one CUDA graph for it (a warm-up on a side stream, then
  ``torch.cuda.graph``), and from then on each forward copies the input into the graph's static
  input, replays, and returns a copy of the static output (never the graph's own buffer, which
  the next replay overwrites);
- at most ``MAX_GRAPHS`` shapes are kept (least recently used dropped: each graph holds its own
  activation memory);
- graphs are dropped whenever the model's packs are remade or moved (new weights, a dtype or
  device move: the buffers' addresses, checked each forward, changed) and never used for CPU
  tensors, under ``torch.compile``, inside another capture, or when PyTorch's TF32
  flag or the Triton conv kernel changed since capture (part of the key).

Opt out: ``ESR_CUDA_GRAPHS=0`` (every model), or ``esr_models.set_cuda_graphs(model, False)``.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass

import torch

MAX_GRAPHS = 4
ENV_VAR = "ESR_CUDA_GRAPHS"


def graphs_enabled_by_env() -> bool:
    """ESR_CUDA_GRAPHS: unset or "1" on (the default), "0" off; anything else is an error."""
    from esr_kernels.errors import InvalidValueError

    text = os.environ.get(ENV_VAR, "").strip()
    if text in ("", "1"):
        return True
    if text == "0":
        return False
    raise InvalidValueError(f"environment variable {ENV_VAR}={text!r}: expected 0 (off) or 1 (on, the default)")


@dataclass
class _Graph:
    graph: object            # torch.cuda.CUDAGraph (a stand-in in the CPU tests)
    static_x: torch.Tensor
    static_out: torch.Tensor


def _flags_key() -> tuple:
    """What else decides which kernels a forward launches: PyTorch's TF32 flag (the Triton
    kernels read it at launch) and the chosen Triton conv kernel."""
    try:
        from esr_kernels.triton.common import conv_tf32_allowed
        from esr_kernels.triton.configs import conv_choice
    except ImportError:  # no triton: the CUDA backend's kernels read neither
        return ()
    return conv_tf32_allowed(), conv_choice()


class ShapeGraphs:
    """The graphs of one model, by input key; see the module docstring."""

    def __init__(self, limit: int = MAX_GRAPHS):
        self.limit = limit
        self.enabled = True
        self.graphs: OrderedDict[tuple, _Graph] = OrderedDict()
        self.seen: set = set()  # keys run once eagerly (the next one captures)
        self.fingerprint: tuple = ()  # the model's buffer addresses the graphs were captured with

    def clear(self) -> None:
        self.graphs.clear()
        self.seen.clear()

    def __deepcopy__(self, memo):  # a copied model starts without graphs (they are not copyable)
        new = ShapeGraphs(self.limit)
        new.enabled = self.enabled
        return new

    def __getstate__(self):
        return {"limit": self.limit, "enabled": self.enabled}

    def __setstate__(self, state):
        self.__init__(state["limit"])
        self.enabled = state["enabled"]

    # ---- the forward
    def eligible(self, x) -> bool:
        return (self.enabled and isinstance(x, torch.Tensor) and x.is_cuda
                and not torch.compiler.is_compiling() and not torch.cuda.is_current_stream_capturing()
                and not (torch.is_grad_enabled() and x.requires_grad) and graphs_enabled_by_env())

    @staticmethod
    def key(x: torch.Tensor) -> tuple:
        return (tuple(x.shape), tuple(x.stride()), x.dtype, x.device, torch.is_inference_mode_enabled(),
                torch.is_grad_enabled(), _flags_key())

    def run(self, forward, x: torch.Tensor, fingerprint=lambda: ()):
        """forward(x), through a CUDA graph where the module docstring says so; ``fingerprint()``
        names the weights the graphs read (a change drops them)."""
        if not self.eligible(x):
            return forward(x)
        now = fingerprint()
        if now != self.fingerprint:
            self.clear()
            self.fingerprint = now
        k = self.key(x)
        entry = self.graphs.get(k)
        if entry is None:
            if k not in self.seen:
                self.seen.add(k)
                return forward(x)
            entry = self._capture(forward, x, k)
        else:
            self.graphs.move_to_end(k)
        entry.static_x.copy_(x)
        entry.graph.replay()
        return entry.static_out.clone()

    def _capture(self, forward, x: torch.Tensor, k: tuple) -> _Graph:
        static_x = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
        static_x.copy_(x)
        graph, static_out = self.capture(forward, static_x)
        while len(self.graphs) >= self.limit:
            self.graphs.popitem(last=False)
        self.graphs[k] = entry = _Graph(graph, static_x, static_out)
        return entry

    @staticmethod
    def capture(forward, static_x):
        """(graph, its output): one warm-up forward on a side stream (what torch.cuda.graph
        asks for), then the capture."""
        side = torch.cuda.Stream(device=static_x.device)
        side.wait_stream(torch.cuda.current_stream(static_x.device))
        with torch.cuda.stream(side):
            forward(static_x)
        torch.cuda.current_stream(static_x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = forward(static_x)
        return graph, out


class GraphedForward:
    """A fused model's ``forward`` (set on the instance by ``install``): the class's forward,
    through the model's ``ShapeGraphs``."""

    def __init__(self, model: torch.nn.Module, graphs: ShapeGraphs):
        self.model = model
        self.graphs = graphs

    def __call__(self, x, *args, **kwargs):
        forward = type(self.model).forward.__get__(self.model)
        if args or kwargs:
            return forward(x, *args, **kwargs)
        return self.graphs.run(forward, x, self.fingerprint)

    def fingerprint(self) -> tuple:
        """Where the model's parameters and buffers (the packs among them) live now."""
        return tuple(t.data_ptr() for t in self.model.parameters()) + \
            tuple(t.data_ptr() for t in self.model.buffers())


def install(model: torch.nn.Module) -> None:
    """Give a fused model its per-shape CUDA graphs (idempotent)."""
    if isinstance(model.__dict__.get("forward"), GraphedForward):
        return
    graphs = ShapeGraphs()
    model._esr_graphs = graphs
    model.forward = GraphedForward(model, graphs)


def graphs_of(model: torch.nn.Module) -> ShapeGraphs | None:
    return getattr(model, "_esr_graphs", None)


def set_cuda_graphs(model: torch.nn.Module, enabled: bool) -> torch.nn.Module:
    """Turn the per-shape CUDA graphs of a fused model on or off (on by default; off drops the
    graphs it holds). Returns ``model``."""
    graphs = graphs_of(model)
    if graphs is None:
        raise ValueError("set_cuda_graphs: not a fused model (esr_models.load(..., fused=True) or fuse_)")
    graphs.enabled = bool(enabled)
    if not enabled:
        graphs.clear()
    return model
