"""Triton kernels of tiue, one module per op (its kernels and their launchers).

Importing this package imports nothing else: each kernel module imports triton itself, so the
modules are loaded lazily by `tiue.ops` and only where Triton can run (a CUDA device, or
TRITON_INTERPRET=1 for CPU tensors, which must be set before the first kernel module loads).
"""
