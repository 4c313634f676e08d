"""The compiled extension `tiue._C`: loading it, and what it was built with.

Loading registers the C++ (and, when built with CUDA, CUDA) kernels as `torch.ops.tiue.*_native`
ops. The module installed with the package is used when there is one; otherwise tiue.build
compiles it once from the package's sources into a per-user cache (TIUE_NO_JIT_BUILD=1: not).
A missing or broken build is recorded, never raised: the ops then use other backends.
"""

from __future__ import annotations

import importlib
import sys

import torch

__all__ = ["build_info", "has_cuda_kernels", "load_error", "location"]

_MODULE = "tiue._C"
_state: dict[str, object] = {}


def load_error(build: bool = True) -> str | None:
    """None once `tiue._C` is loaded, else why it is not (decided on the first call).

    build=False on that first call: load an installed or cached build but compile nothing now
    (`tiue info` without --build); the answer then holds for the whole process.
    """
    if "error" not in _state:
        _state["error"] = _load(build)
    return _state["error"]  # type: ignore[return-value]


def _load(build: bool) -> str | None:
    blocked = _MODULE in sys.modules and sys.modules[_MODULE] is None
    try:
        importlib.import_module(_MODULE)
        return None
    except ImportError as error:
        why = str(error)
    except OSError as error:  # a broken build that the loader rejects
        why = f"failed to load: {error}"
    if blocked:  # sys.modules["tiue._C"] = None: switched off on purpose, so build nothing
        return f"{_MODULE} is not built ({why})"
    from tiue import build as first_use

    return first_use.load(why, build=build)[1]


def location() -> str | None:
    """The file `tiue._C` was loaded from (installed or cached build), None when not loaded."""
    return getattr(sys.modules.get(_MODULE), "__file__", None) if load_error() is None else None


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
