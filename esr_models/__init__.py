"""Reference implementations of the NTIRE 2024 efficient x4 SR models, and their loader.

Every model takes float RGB NCHW in [0, 1] and returns (N, 3, 4H, 4W) in [0, 1] units,
unclamped.

Sub-packages, by concern; each imports only those listed before it (tests/test_import_graph.py):
  arch/        the model definitions and their checkpoints (weights, key layouts, detection)
  fused/       swapping a model's modules for fused-kernel ones (esr_kernels)
  io/          image and video files, output naming, a batch of files (jobs), the sample image
  infer/       ready-to-run models (``load``), tiling, memory, the image ``Upscaler``
  evaluation/  the PSNR / SSIM protocol
  training/    train-time networks, data, recipes, trainer, deploy-checkpoint export
  interop/     ONNX export and spandrel support
  cli/         the ``esr`` command, one module per sub-command
"""
from __future__ import annotations

from esr_kernels.errors import EsrError

from .arch.checkpoints import load_state_dict_file
from .arch.registry import UnknownArchitectureError, detect
from .arch.weights import WeightsError
from .fused.fusion import fuse_
from .fused.graphs import set_cuda_graphs
from .infer.loading import MODEL_NAMES, load, min_input_size
from .interop.spandrel import register_spandrel
from .training.models import deploy, trainable

__all__ = ["MODEL_NAMES", "load", "fuse_", "set_cuda_graphs", "load_state_dict_file", "detect", "min_input_size",
           "UnknownArchitectureError", "WeightsError", "trainable", "deploy",
           "register_spandrel", "EsrError"]
