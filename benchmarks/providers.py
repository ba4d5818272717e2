"""Ways of running a model that the benchmarks compare ("providers").

``build_runner`` turns (provider, model name, input shape, device) into a ``Runner``: calling it
runs one forward pass on a fixed input and returns only after the device has finished (CUDA
work is synchronised), so that the benchmark times real work. ``Runner.forward`` runs the same
compiled/exported/fused model on any input (the Set5 PSNR check, ``benchmarks.quality``), and
``Runner.info`` says what actually ran: the kernel backend and dtype the model ended up with
(``esr_models.load`` may fall back to the reference), the precision OpenVINO chose, the
torch.compile options.

CPU providers added for issue #19 item 5 ("the whole field"):
- ``openvino_default``: OpenVINO with no precision hint; it picks bf16 on CPUs with
  AVX512_BF16 or AMX. ``info["precision"]`` records what it chose.
- ``compile_fp32`` / ``compile_bf16``: torch.compile (inductor) with ``freezing=True`` (weights
  folded as constants, oneDNN weight prepacking), max-autotune, static shapes; bf16 under
  ``torch.autocast("cpu", dtype=torch.bfloat16)``. max-autotune is the strongest competitor
  (issue #19 measured it) and measured no slower to compile here (RLFN 64x64 on 2 loaded
  cores: 39 s with it, 41 s without; the compile, not the autotuning, dominates); on CPU it
  autotunes the GEMM templates, the convolutions go to oneDNN either way.
  ``ESR_BENCH_COMPILE_AUTOTUNE=0`` turns it off; ``info["compile_options"]`` records which ran.
- ``fused_bf16``: ``esr_models.load(name, fused=True, dtype=torch.bfloat16)``; whatever backend
  that gives (the reference, with a warning, until the native bf16 path lands) is in
  ``info["backend"]`` and ``info["warnings"]``.
"""
from __future__ import annotations

import importlib.util
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import esr_models


@dataclass(frozen=True)
class Provider:
    name: str
    dtype: torch.dtype          # the model's weights and the input's dtype
    channels_last: bool
    needs_cuda: bool = False
    cpu_only: bool = False
    needs_module: str | None = None
    fused_backend: str | None = None
    autocast: torch.dtype | None = None     # torch.autocast dtype around the forward
    ov_precision: str | None = None         # OpenVINO INFERENCE_PRECISION_HINT; None: its default
    cpu_gemm: str | None = None             # the CPU extension's bf16 GEMM around each call (ESR_CPU_GEMM)

    def unavailable_reason(self, device: torch.device) -> str | None:
        if self.needs_cuda and device.type != "cuda":
            return f"{self.name} needs a CUDA device"
        if self.cpu_only and device.type != "cpu":
            return f"{self.name} is a CPU provider"
        if self.needs_module and importlib.util.find_spec(self.needs_module) is None:
            return f"{self.needs_module} is not installed (pip install -e '.[cpu-providers]')"
        if self.cpu_gemm:
            from esr_kernels.policy import bf16_gemm_available

            if not bf16_gemm_available():
                return f"{self.name}: no bf16 GEMM at this CPU's ISA level (needs AVX512_BF16)"
        if self.fused_backend:
            from esr_kernels.policy import backend_unavailable_reason

            return backend_unavailable_reason(self.fused_backend, device)
        return None


PROVIDERS = [
    Provider("eager_fp32", torch.float32, False),
    Provider("eager_fp32_channels_last", torch.float32, True),
    Provider("eager_fp16_channels_last", torch.float16, True, needs_cuda=True),
    Provider("compile_fp16", torch.float16, True, needs_cuda=True),
    Provider("compile_fp32", torch.float32, True, cpu_only=True),
    Provider("compile_bf16", torch.float32, True, cpu_only=True, autocast=torch.bfloat16),
    Provider("fused_fp32", torch.float32, False, fused_backend="auto"),
    # "auto" as a user would ask for it; Runner.info says whether native kernels or the
    # reference ran (resolve_backend decides per dtype).
    Provider("fused_bf16", torch.bfloat16, False, cpu_only=True, fused_backend="auto"),
    # The same with each bf16 GEMM named (issue 29's A/B; "auto" above is one of them): oneDNN's
    # brgemm (AMX tiles where the CPU has them, and there the 3x3 convs direct), and the own
    # micro-kernel (vdpbf16ps, the 3x3 convs Winograd).
    Provider("fused_bf16_brgemm", torch.bfloat16, False, cpu_only=True, fused_backend="cpu", cpu_gemm="brgemm"),
    Provider("fused_bf16_own", torch.bfloat16, False, cpu_only=True, fused_backend="cpu", cpu_gemm="own"),
    Provider("fused_fp16", torch.float16, False, needs_cuda=True, fused_backend="auto"),
    Provider("fused_fp16_cuda_graph", torch.float16, False, needs_cuda=True, fused_backend="auto"),
    Provider("onnxruntime_fp32", torch.float32, False, cpu_only=True, needs_module="onnxruntime"),
    Provider("openvino_fp32", torch.float32, False, cpu_only=True, needs_module="openvino", ov_precision="f32"),
    Provider("openvino_default", torch.float32, False, cpu_only=True, needs_module="openvino"),
]


@dataclass
class Runner:
    """``runner()`` times one forward on the fixed input; ``forward(x)`` maps any (N, 3, H, W)
    float32 input in [0, 1] to the float32 output on ``x``'s device (for accuracy checks)."""
    run: Callable[[], object]
    forward: Callable[[torch.Tensor], torch.Tensor]
    info: dict = field(default_factory=dict)

    def __call__(self):
        return self.run()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _export_onnx(model: torch.nn.Module, path: Path) -> None:
    """The export ``esr export --onnx`` writes (``esr_models.interop.onnx``, one code path), with
    its dynamic batch/height/width axes, so the ONNX providers time what users run (and the
    Set5 check can feed them every image size). The accuracy check against the reference is
    left to tests/models/test_onnx.py (not timed here)."""
    from esr_models.interop.onnx import export_onnx

    export_onnx(model, path, dynamic=True, verify=False)


def compile_options() -> dict:
    """Inductor options of the CPU compile providers: freezing (what a deployment of a frozen
    model uses) and max-autotune unless ESR_BENCH_COMPILE_AUTOTUNE=0 (see the module docstring)."""
    return {"freezing": True, "max_autotune": os.environ.get("ESR_BENCH_COMPILE_AUTOTUNE", "1") != "0"}


def _compile(model: torch.nn.Module, device: torch.device, info: dict):
    """torch.compile as each device's compile provider runs it; ``info`` records how."""
    info["backend"] = "inductor"
    if device.type == "cuda":
        # As before this harness measured CUDA: mode="max-autotune" (which adds CUDA graphs).
        info["compile_options"] = {"mode": "max-autotune"}
        return torch.compile(model, mode="max-autotune", fullgraph=True)
    info["compile_options"] = opts = compile_options()
    # Dynamo counts recompilations per code object, across model instances (nn.Module forwards
    # are inlined): compile_fp32 and compile_bf16, each at the timed size and Set5's five, at
    # two sizes, pass its default limit of 8 and fullgraph=True would then fail.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    # dynamic=False: the timed shape gets its own static graph; the Set5 sizes, run after the
    # timing, compile their own and can never replace it.
    return torch.compile(model, options=opts, dynamic=False, fullgraph=True)


def _load(provider: Provider, model_name: str, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """The model as the provider runs it, and what ``load`` actually gave (backend, warnings)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = esr_models.load(model_name, device=device, dtype=provider.dtype,
                                fused=provider.fused_backend is not None,
                                backend=provider.fused_backend or "auto")
    for w in caught:  # still shown: a fallback must not go unseen in the console either
        warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    if provider.channels_last:
        model = model.to(memory_format=torch.channels_last)
    dtype = next(model.parameters()).dtype
    info = {"backend": getattr(model, "backend", "eager"), "dtype": str(dtype).removeprefix("torch."),
            "layout": "channels_last" if provider.channels_last else "NCHW",
            "warnings": [str(w.message) for w in caught]}
    return model, info


def _torch_infer(provider: Provider, model: torch.nn.Module, device: torch.device, info: dict):
    """(prepare, infer) for the eager, fused and compiled providers: ``prepare(x)`` converts a
    float32 input to the provider's dtype and layout (outside the timing), ``infer(xp)`` runs
    the forward and synchronises."""
    fn = _compile(model, device, info) if provider.name.startswith("compile") else model
    if provider.autocast is not None:
        info["autocast"] = str(provider.autocast).removeprefix("torch.")
    fmt = torch.channels_last if provider.channels_last else torch.contiguous_format

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.to(device=device, dtype=provider.dtype).contiguous(memory_format=fmt)

    def infer(xp: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=provider.autocast or torch.bfloat16,
                                                    enabled=provider.autocast is not None):
            out = fn(xp)
        _sync(device)
        return out
    return prepare, infer


def _cuda_graph_run(model: torch.nn.Module, x: torch.Tensor, device: torch.device) -> Callable[[], None]:
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


def _onnx_call(provider: Provider, model: torch.nn.Module, model_name: str, info: dict):
    """call(array) -> array through ONNX Runtime or OpenVINO on the exported graph."""
    onnx_path = Path(tempfile.mkdtemp(prefix="esr-bench-")) / f"{model_name}.onnx"
    _export_onnx(model, onnx_path)
    threads = torch.get_num_threads()
    if provider.name.startswith("onnxruntime"):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        session = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        info.update(backend="onnxruntime", precision="f32", onnxruntime=ort.__version__)
        return lambda a: session.run(None, {"lr": a})[0]

    import openvino as ov

    config = {"INFERENCE_NUM_THREADS": threads}
    if provider.ov_precision:
        config["INFERENCE_PRECISION_HINT"] = provider.ov_precision
    compiled = ov.Core().compile_model(str(onnx_path), "CPU", config)
    # What OpenVINO chose (with no hint: bf16 where the CPU has AVX512_BF16 or AMX).
    chosen = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type: "f32", "bf16", "f16"
    info.update(backend="openvino", precision=getattr(chosen, "to_string", lambda: str(chosen))(),
                precision_hint=provider.ov_precision, openvino=ov.__version__)
    request = compiled.create_infer_request()
    out_port = compiled.output(0)
    return lambda a: request.infer({0: a})[out_port]


def build_runner(provider: Provider, model_name: str, shape: tuple[int, ...],
                 device: torch.device) -> Runner:
    """The provider's Runner for ``model_name`` on a fixed random input of ``shape``."""
    model, info = _load(provider, model_name, device)
    x = torch.rand(shape, device=device, dtype=torch.float32)
    if provider.name.startswith(("onnxruntime", "openvino")):
        call = _onnx_call(provider, model, model_name, info)
        x_np = x.cpu().numpy()

        def forward(inp: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(call(inp.detach().float().cpu().numpy())).to(inp.device)
        return Runner(lambda: call(x_np), forward, info)
    if not provider.name.startswith(("eager", "fused", "compile")):
        raise ValueError(f"unknown provider {provider.name}")
    prepare, infer = _torch_infer(provider, model, device, info)
    xp = prepare(x)  # the fixed input already in the provider's dtype and layout: only the forward is timed
    run = _cuda_graph_run(model, xp, device) if provider.name.endswith("cuda_graph") else (lambda: infer(xp))
    forward = lambda inp: infer(prepare(inp)).float()  # noqa: E731
    if provider.cpu_gemm:
        run, forward = _with_cpu_gemm(provider.cpu_gemm, run), _with_cpu_gemm(provider.cpu_gemm, forward)
        info["cpu_gemm"] = provider.cpu_gemm
    return Runner(run, forward, info)


def _with_cpu_gemm(choice: str, fn):
    """``fn`` run with the CPU extension's bf16 GEMM set to ``choice`` (what ESR_CPU_GEMM sets
    at load), the process's own choice restored after: providers interleave in one process."""
    from esr_kernels.policy import native_ops

    ops, kind = native_ops("_C_cpu"), {"own": 0, "brgemm": 1}[choice]

    def call(*args):
        before = int(ops.bf16_gemm())
        ops.set_bf16_gemm(kind)
        try:
            return fn(*args)
        finally:
            ops.set_bf16_gemm(before)
    return call
