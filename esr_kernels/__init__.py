"""Fused kernels for the efficient SR models. Backends are optional and imported lazily."""
from __future__ import annotations

from .backends import available_backends, empty_cache

__all__ = ["available_backends", "empty_cache"]
