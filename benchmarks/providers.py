"""Ways of running a model that the benchmarks compare ("providers").

Each provider turns (model name, input shape, device) into a zero-argument callable that runs
one forward pass and returns only after the device has finished (CUDA work is synchronised),
so that the benchmark times real work.
"""
from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import esr_models


@dataclass(frozen=True)
class Provider:
    name: str
    dtype: torch.dtype
    channels_last: bool
    needs_cuda: bool = False
    cpu_only: bool = False
    needs_module: str | None = None
    fused_backend: str | None = None

    def unavailable_reason(self, device: torch.device) -> str | None:
        if self.needs_cuda and device.type != "cuda":
            return f"{self.name} needs a CUDA device"
        if self.cpu_only and device.type != "cpu":
            return f"{self.name} is a CPU provider"
        if self.needs_module and importlib.util.find_spec(self.needs_module) is None:
            return f"{self.needs_module} is not installed (pip install -e '.[cpu-providers]')"
        if self.fused_backend:
            from esr_kernels.policy import backend_unavailable_reason

            return backend_unavailable_reason(self.fused_backend, device)
        return None


PROVIDERS = [
    Provider("eager_fp32", torch.float32, False),
    Provider("eager_fp32_channels_last", torch.float32, True),
    Provider("eager_fp16_channels_last", torch.float16, True, needs_cuda=True),
    Provider("compile_fp16", torch.float16, True, needs_cuda=True),
    Provider("fused_fp32", torch.float32, False, fused_backend="auto"),
    Provider("fused_fp16", torch.float16, False, needs_cuda=True, fused_backend="auto"),
    Provider("fused_fp16_cuda_graph", torch.float16, False, needs_cuda=True, fused_backend="auto"),
    Provider("onnxruntime_fp32", torch.float32, False, cpu_only=True, needs_module="onnxruntime"),
    Provider("openvino_fp32", torch.float32, False, cpu_only=True, needs_module="openvino"),
]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _export_onnx(model: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    """The export ``esr export --onnx`` writes (``esr_models.onnx_export``, one code path), with
    its dynamic batch/height/width axes, so the ONNX providers time what users run. The
    accuracy check against the reference is left to tests/test_onnx.py (not timed here)."""
    from esr_models.onnx_export import export_onnx

    export_onnx(model, path, dynamic=True, verify=False)


def build_runner(provider: Provider, model_name: str, shape: tuple[int, ...],
                 device: torch.device) -> Callable[[], object]:
    model = esr_models.load(model_name, device=device, dtype=provider.dtype,
                            fused=provider.fused_backend is not None,
                            backend=provider.fused_backend or "auto")
    x = torch.rand(shape, device=device, dtype=provider.dtype)
    if provider.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    if provider.name.endswith("cuda_graph"):
        static_x = x.clone()
        with torch.inference_mode():
            for _ in range(2):  # warm up outside the graph (allocations, autotuning)
                model(static_x)
            torch.cuda.synchronize(device)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                model(static_x)

        def run():
            graph.replay()
            _sync(device)
        return run

    if provider.name.startswith(("eager", "fused")):
        def run():
            with torch.inference_mode():
                model(x)
            _sync(device)
        return run

    if provider.name.startswith("compile"):
        compiled = torch.compile(model, mode="max-autotune", fullgraph=True)

        def run():
            with torch.inference_mode():
                compiled(x)
            _sync(device)
        return run

    tmp = Path(tempfile.mkdtemp(prefix="esr-bench-"))
    onnx_path = tmp / f"{model_name}.onnx"
    _export_onnx(model, x, onnx_path)
    x_np = x.cpu().numpy()
    if provider.name.startswith("onnxruntime"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"lr": x_np})
    if provider.name.startswith("openvino"):
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(str(onnx_path), "CPU",
                                      {"INFERENCE_NUM_THREADS": torch.get_num_threads(),
                                       "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        return lambda: request.infer({0: x_np})
    raise ValueError(f"unknown provider {provider.name}")
