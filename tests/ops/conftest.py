"""Fixtures for the kernel tests: one backend at a time, forced with TIUE_KERNELS."""

import os

# Triton runs on CPU tensors through its interpreter; this must precede the first kernel import.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from .support import BACKENDS, force_backend  # noqa: E402


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Force one backend for the test (TIUE_KERNELS); skip when it is not available here."""
    return force_backend(request.param, monkeypatch)
