"""The per-user folder tiue keeps derived files in (compiled kernels, reference statistics)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_root"]

CACHE_ENV = "TIUE_CACHE"


def cache_root() -> Path:
    """$TIUE_CACHE, else $XDG_CACHE_HOME/tiue, else ~/.cache/tiue."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "tiue"
