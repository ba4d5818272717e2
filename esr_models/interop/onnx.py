"""ONNX export of the reference models: ``export_onnx``, used by ``esr export --onnx`` and by the
benchmarks' ONNX Runtime / OpenVINO providers (one code path).

The graph takes ``lr``: float (N, C, H, W) in [0, 1] and gives ``sr``: (N, C, 4H, 4W) in [0, 1]
units, unclamped, like the PyTorch model. By default N, H and W are dynamic axes.

Exporter: torch.onnx's TorchScript exporter (``dynamo=False``). On these models it exports in
a few seconds, needs no onnxscript, and ONNX Runtime reproduces the float32 reference to
< 1e-4 (the torch.export-based exporter took 20-30 s a model here and gave RLFN 1.2e-4); SPAN
on image content (on uniform noise its outputs leave [0, 1] by far: ``image_like``).

Opset: ``DEFAULT_OPSET`` = 17, read by every current runtime (ONNX Runtime >= 1.12, OpenVINO,
TensorRT >= 8.6); the models gain nothing from a later one. Opsets ``MIN_OPSET`` (11) to
``MAX_OPSET`` (20, the TorchScript exporter's last) are accepted: below 11, bilinear
upsampling has no half-pixel mode (``Resize`` arrived in opset 11) and the exported IFADNet is
off by 0.04.

What the graph does not do: the PyTorch models' input checks (shape, dtype, minimum size) are
Python code and are not part of the graph. Inputs smaller than the model's ``min_size``
(metadata ``min_input_size``) fail inside the runtime or give meaningless output.
"""
from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from esr_kernels.errors import EsrError

from ..infer.loading import load
from ..io.outputs import write_atomically

DEFAULT_OPSET = 17
MIN_OPSET = 11
MAX_OPSET = 20
INPUT_NAME = "lr"
OUTPUT_NAME = "sr"
# float32 ONNX Runtime vs the PyTorch reference, max abs difference on [0, 1] images, that the
# tests hold every model to at the VERIFY_SHAPES_HW sizes (measured: <= 6e-5, RLFN).
FLOAT32_TOLERANCE = 1e-4
# What export_onnx(verify=True) refuses to write: 10x the above, so that another CPU's rounding
# never fails a good export, still far below what a wrong graph gives (opset 10's upsampling
# is off by 4e-2).
VERIFY_TOLERANCE = 1e-3
# Odd sizes and a batch of 2 at another size: the dynamic axes are exercised, not assumed.
VERIFY_SHAPES_HW = ((1, 47, 59), (2, 32, 40))


def image_like(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random float32 input of ``shape`` (N, C, H, W) shaped like an image: a smooth field (uniform
    noise at 1/4 resolution, bilinearly upsampled) plus fine noise (std 0.03), clamped to [0, 1].
    Why not uniform noise: SPAN maps it far outside [0, 1] (outputs up to ~70 for spantiny),
    where float32 rounding alone differs between ONNX Runtime and PyTorch by ~2e-3; on image
    content every model's output stays near [0, 1] and the two agree to ~1e-5."""
    n, c, h, w = shape
    low = torch.rand((n, c, max(1, h // 4), max(1, w // 4)), generator=generator)
    smooth = torch.nn.functional.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return (smooth + 0.03 * torch.randn(shape, generator=generator)).clamp(0.0, 1.0)


class OnnxExportError(EsrError, RuntimeError):
    """The model cannot be exported, or the exported graph does not reproduce it."""


@dataclass(frozen=True)
class OnnxExport:
    path: Path
    opset: int
    dynamic: bool
    seconds: float  # torch.onnx.export time
    # Largest |ORT - PyTorch| over the verification inputs; None when not verified.
    max_abs_error: float | None
    verified_shapes: tuple[tuple[int, ...], ...]


def _resolve_model(model_or_name) -> nn.Module:
    if isinstance(model_or_name, nn.Module):
        model = model_or_name
    else:
        model = load(model_or_name)
    if getattr(model, "backend", None) is not None or not hasattr(model, "min_size"):
        raise OnnxExportError(f"{type(model).__name__} is not a reference model: export the model "
                              "esr_models.load(name) returns (fused=False); the fused kernels are not ONNX ops")
    return model


def _model_info(model: nn.Module) -> tuple[torch.device, torch.dtype, int]:
    p = next(model.parameters())
    return p.device, p.dtype, int(model.head.in_channels)


def _trace_export(model: nn.Module, example: torch.Tensor, dst: Path, opset: int, dynamic: bool) -> None:
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                        OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}}
    with warnings.catch_warnings():
        # The trace passes through the models' Python input checks (check_input), which only
        # raise: the tracer's "converting a tensor to a Python boolean" warning is moot there.
        # The deprecation notice is about the exporter chosen on purpose (module docstring).
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message="The feature will be removed.*")
        warnings.filterwarnings("ignore", message=".*Constant folding.*")
        torch.onnx.export(model, (example,), str(dst), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          opset_version=opset, dynamic_axes=dynamic_axes, do_constant_folding=True,
                          dynamo=False)


def _add_metadata(path: Path, model: nn.Module, name: str | None) -> None:
    import onnx

    proto = onnx.load(str(path))
    meta = {"producer": "esr-kernels", "architecture": type(model).__name__,
            "scale": str(int(model.scale)), "min_input_size": str(int(model.min_size)),
            "input_range": "[0, 1] float, NCHW RGB", "output": "(N, C, scale*H, scale*W), unclamped"}
    if name:
        meta["source"] = name
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def run_onnxruntime(path: str | Path, x: torch.Tensor, threads: int | None = None):
    """``sr`` for ``x`` from ONNX Runtime's CPU provider (numpy array)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: x.detach().cpu().numpy()})[0]


def verify_onnx(path: str | Path, model: nn.Module, shapes: tuple[tuple[int, ...], ...]) -> float:
    """Largest |ONNX Runtime - PyTorch| over random image-like inputs (``image_like``) of
    ``shapes`` (full NCHW shapes)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    device, dtype, _ = _model_info(model)
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = image_like(shape, gen)
        with torch.no_grad():
            ref = model(x.to(device=device, dtype=dtype)).float().cpu()
        got = torch.from_numpy(session.run(None, {INPUT_NAME: x.to(dtype).numpy()})[0]).float()
        if got.shape != ref.shape:
            raise OnnxExportError(f"{path}: ONNX output shape {tuple(got.shape)} for input {shape}, "
                                  f"expected {tuple(ref.shape)}")
        worst = max(worst, float((got - ref).abs().max()))
    return worst


def export_onnx(model_or_name, path: str | Path, opset: int = DEFAULT_OPSET, dynamic: bool = True,
                input_shape: tuple[int, int, int, int] | None = None, verify: bool | None = None,
                overwrite: bool = False) -> OnnxExport:
    """Export a reference model (a module, a model name or a checkpoint path, as for
    ``esr_models.load``) to ONNX at ``path`` and return what was done.

    ``dynamic``: batch, height and width are dynamic axes (default); with ``dynamic=False`` the
    graph is fixed to ``input_shape`` (N, C, H, W), which is then required. The module is
    exported in its own dtype and device (float32 CPU for a name).

    ``verify`` (default: when onnxruntime is installed and the model is float32): run the graph
    with ONNX Runtime on odd-sized random image-like inputs (``image_like``; 1x47x59 and a batch of 2 at 32x40 when
    dynamic, else ``input_shape``) and raise OnnxExportError if it differs from the PyTorch
    model by more than ``VERIFY_TOLERANCE`` (1e-3; float16 models: 3e-2); nothing is then
    left at ``path``. ``OnnxExport.max_abs_error`` says what was measured.

    The file is written under a temporary name and moved into place; an existing ``path`` is
    an error (``esr_models.io.outputs.OutputExistsError``, a FileExistsError) unless
    ``overwrite``."""
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ValueError(f"opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} "
                         f"(default {DEFAULT_OPSET})")
    opset = int(opset)
    if not dynamic and input_shape is None:
        raise ValueError("dynamic=False needs input_shape=(N, C, H, W), the graph's fixed input shape")
    model = _resolve_model(model_or_name)
    device, dtype, channels = _model_info(model)
    if dtype not in (torch.float32, torch.float16):
        raise ValueError(f"cannot export a {dtype} model: ONNX Runtime and numpy have no bfloat16 inputs; "
                         "export the float32 model (or a float16 one)")
    if input_shape is not None:
        input_shape = tuple(int(s) for s in input_shape)
        if len(input_shape) != 4 or input_shape[1] != channels:
            raise ValueError(f"input_shape must be (N, {channels}, H, W), got {input_shape}")
        if min(input_shape[2:]) < model.min_size:
            raise ValueError(f"input_shape {input_shape}: {type(model).__name__} needs H, W >= {model.min_size}")
    example_shape = input_shape or (1, channels, 64, 64)
    if verify is None:
        import importlib.util

        verify = dtype == torch.float32 and importlib.util.find_spec("onnxruntime") is not None
    shapes = (tuple((n, channels, h, w) for n, h, w in VERIFY_SHAPES_HW) if dynamic else (example_shape,))
    name = None if isinstance(model_or_name, nn.Module) else str(model_or_name)

    # Tracing runs the model once: on a copy in eval mode, so the caller's module is untouched.
    traced = copy.deepcopy(model).eval() if model.training else model
    example = torch.rand(example_shape, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=dtype)
    result: dict = {}

    def write(tmp: Path) -> None:
        t0 = time.perf_counter()
        with torch.no_grad():
            _trace_export(traced, example, tmp, opset, dynamic)
        result["seconds"] = time.perf_counter() - t0
        _add_metadata(tmp, traced, name)
        if verify:
            err = verify_onnx(tmp, traced, shapes)
            result["error"] = err
            tol = VERIFY_TOLERANCE if dtype == torch.float32 else 3e-2  # float16 rounding, both sides
            if not err <= tol:  # also catches NaN
                raise OnnxExportError(f"the exported graph differs from the PyTorch model by {err:.3g} "
                                      f"(max abs, tolerance {tol:g}) under ONNX Runtime; not written")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, write, overwrite=overwrite)
    return OnnxExport(path=path, opset=opset, dynamic=dynamic, seconds=result["seconds"],
                      max_abs_error=result.get("error"), verified_shapes=shapes if verify else ())
