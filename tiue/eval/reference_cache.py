"""Features of a folder of real images, computed once batch by batch and cached on disk.

The cache key covers the folder's file list (names, sizes, modification times), the feature
extractor (its name and weights file) and the preprocessing, so any change recomputes.
Features, not just (mu, sigma), are kept: precision/recall/density/coverage need them.
30K x 2048 float32 features are 245 MB on disk and in memory.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tiue.cache import cache_root
from tiue.eval.preprocessing import check_image_files, list_image_files, open_image

__all__ = ["folder_features", "cache_file", "default_cache_dir", "file_fingerprint"]


def default_cache_dir() -> Path:
    """<tiue's cache folder>/eval: ~/.cache/tiue/eval unless TIUE_CACHE or XDG_CACHE_HOME say otherwise."""
    return cache_root() / "eval"


def file_fingerprint(path: str | Path | None) -> str:
    if path is None:
        return "embedded"
    path = Path(path).resolve()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return json.dumps([[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files])


def cache_file(paths: list[Path], identity: str, cache_dir: str | Path | None) -> Path | None:
    """Where the features of `paths` under `identity` are cached (None: no cache)."""
    if cache_dir is None:
        return None
    key = hashlib.sha256(json.dumps({
        "files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in paths],
        "identity": identity,
    }).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"real-{key}.npy"


def folder_features(folder: str | Path, features: Callable[[np.ndarray], np.ndarray], prepare: Callable[[Image.Image], np.ndarray],
                    identity: str, cache_dir: str | Path | None = None, batch_size: int = 64, limit: int | None = None,
                    progress: bool = True) -> np.ndarray:
    """(N, D) features of `folder`'s images (the first `limit` by sorted path), cached under
    `cache_dir` (None: no cache). `identity` names the extractor and preprocessing."""
    paths = list_image_files(folder)[:limit]
    cached = cache_file(paths, identity, cache_dir)
    if cached is not None and cached.is_file():
        return np.load(cached)
    check_image_files(paths)  # every header before the first batch: a bad file fails in seconds
    out = []
    for start in tqdm(range(0, len(paths), batch_size), desc=f"real images ({Path(folder).name})", disable=not progress, unit="batch"):
        chunk = np.stack([prepare(open_image(p)) for p in paths[start : start + batch_size]])
        out.append(np.asarray(features(chunk), np.float32))
    result = np.concatenate(out)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        temporary = cached.with_name(f".{cached.name}.{os.getpid()}.tmp.npy")
        np.save(temporary, result)
        os.replace(temporary, cached)
    return result
