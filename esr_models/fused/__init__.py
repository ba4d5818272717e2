"""Fused models: ``fuse_`` swaps a reference model's modules for ones that run esr_kernels' backends."""
