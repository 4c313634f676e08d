"""Shared helpers of the kernel tests: devices, tolerances, float64 comparisons."""

from __future__ import annotations

import pytest
import torch

from tiue.ops import dispatch

BACKENDS = ("torch", "cpp", "triton", "cuda")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Per-dtype tolerances, forward and backward apart (the backward adds one more rounding of the
# incoming gradient and sums over more terms). Compared against float64 computed from the same
# rounded inputs, so these bound the kernel's own accumulation and output rounding.
TOLERANCES = {
    "forward": {
        torch.float64: dict(atol=1e-10, rtol=1e-10),
        torch.float32: dict(atol=1e-5, rtol=1e-5),
        torch.float16: dict(atol=2e-3, rtol=2e-3),
        torch.bfloat16: dict(atol=1.6e-2, rtol=1.6e-2),
    },
    "backward": {
        torch.float64: dict(atol=1e-10, rtol=1e-10),
        torch.float32: dict(atol=2e-5, rtol=1e-4),
        torch.float16: dict(atol=4e-3, rtol=5e-3),
        torch.bfloat16: dict(atol=3e-2, rtol=3e-2),
    },
}


def device_for(backend: str) -> torch.device:
    """Where a backend's kernels run here: CUDA for cuda (and triton when a GPU exists)."""
    if backend == "cuda" or (backend == "triton" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, direction: str):
    """Compare in float64 with the tolerance of `dtype` for `direction` (forward/backward)."""
    tol = TOLERANCES[direction][dtype]
    torch.testing.assert_close(actual.double().cpu(), expected.double().cpu(), **tol)


def randn(*shape, dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator, dtype=torch.float32).to(device=device, dtype=dtype)


def force_backend(backend: str, monkeypatch) -> str:
    """Set TIUE_KERNELS=backend for one test, or skip it when the backend is unavailable here."""
    reason = dispatch.unavailable_reason(backend)
    if reason is not None:
        pytest.skip(f"{backend} backend unavailable: {reason}")
    monkeypatch.setenv(dispatch.ENV_VAR, backend)
    return backend
