"""Reference implementations of the NTIRE 2024 efficient x4 SR models, and their loader.

Every model takes float RGB NCHW in [0, 1] and returns (N, 3, 4H, 4W) in [0, 1] units,
unclamped.
"""
from __future__ import annotations

from esr_kernels.errors import EsrError

from .loading import MODEL_NAMES, load, load_state_dict_file, min_input_size
from .fusion import fuse_
from .registry import UnknownArchitectureError, detect
from .weights import WeightsError
from .spandrel_support import register_spandrel
from .training.models import deploy, trainable

__all__ = ["MODEL_NAMES", "load", "fuse_", "load_state_dict_file", "detect", "min_input_size",
           "UnknownArchitectureError", "WeightsError", "trainable", "deploy",
           "register_spandrel", "EsrError"]
