"""Fixtures for the kernel tests: one backend at a time, forced with TIUE_KERNELS."""

import pytest

from .support import BACKENDS, force_backend


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    """Force one backend for the test (TIUE_KERNELS); skip when it is not available here."""
    return force_backend(request.param, monkeypatch)
