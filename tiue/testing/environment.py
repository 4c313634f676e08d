"""Process environment the test suites set before anything imports Triton."""

from __future__ import annotations

from collections.abc import MutableMapping

__all__ = ["use_triton_interpreter_without_gpu"]


def use_triton_interpreter_without_gpu(environ: MutableMapping[str, str], cuda_available: bool) -> None:
    """Run Triton kernels on CPU tensors through the interpreter, but only where there is no GPU:
    on a CUDA machine the tests must run the compiled kernels. An explicit TRITON_INTERPRET wins."""
    if not cuda_available:
        environ.setdefault("TRITON_INTERPRET", "1")
