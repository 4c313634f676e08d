"""The compiled extension `tiue._C`: loading it, and what it was built with.

Loading registers the C++ (and, when built with CUDA, CUDA) kernels as `torch.ops.tiue.*_native`
ops. A missing or broken build is recorded, never raised: the ops then use other backends.
"""

from __future__ import annotations

import importlib

import torch

__all__ = ["build_info", "has_cuda_kernels", "load_error"]

_MODULE = "tiue._C"
_state: dict[str, object] = {}


def load_error() -> str | None:
    """None once `tiue._C` is loaded, else why it is not (loaded on first call)."""
    if "error" not in _state:
        _state["error"] = _load()
    return _state["error"]  # type: ignore[return-value]


def _load() -> str | None:
    try:
        importlib.import_module(_MODULE)
    except ImportError as error:
        return (
            f"{_MODULE} is not built ({error}); build it with "
            "`pip install --no-build-isolation -e .`"
        )
    except OSError as error:  # e.g. built against another torch: undefined symbols
        return f"{_MODULE} failed to load ({error}); rebuild it against the installed torch"
    return None


def build_info() -> dict[str, str]:
    """What `tiue._C` was built with, e.g. {"cpu": "openmp", "cuda": "no"}; {} when not loaded."""
    if load_error() is not None:
        return {}
    if "info" not in _state:
        text = torch.ops.tiue.native_build_info()
        _state["info"] = dict(item.split("=", 1) for item in text.split(";") if "=" in item)
    return _state["info"]  # type: ignore[return-value]


def has_cuda_kernels() -> bool:
    return build_info().get("cuda", "no") != "no"
