"""Fused kernels for efficient x4 super-resolution: the backend contract (contract.py), one
reference per op (reference.py), the backends (triton_backend, cpu_backend, cuda_backend) and
the policy that chooses between them (policy.py)."""
from .policy import available_backends, empty_cache

__all__ = ["available_backends", "empty_cache"]
