"""GigaGAN's evaluation protocol for real text-to-image models: every image, real or generated,
is center-cropped to a square and resized to 256x256 with PIL's Lanczos filter before any
feature extractor sees it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["center_crop_resize", "load_image_folder", "IMAGE_SUFFIXES", "GIGAGAN_SIZE"]

GIGAGAN_SIZE = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def center_crop_resize(image: Image.Image, size: int = GIGAGAN_SIZE) -> np.ndarray:
    """(size, size, 3) uint8: the largest centred square, resized with Lanczos."""
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def load_image_folder(folder: str | Path, size: int = GIGAGAN_SIZE, limit: int | None = None) -> np.ndarray:
    """Every image file of `folder` (sorted by name, recursively), preprocessed: (N, size, size, 3)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--real-images: not a folder: {folder}")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if limit is not None:
        paths = paths[:limit]
    if not paths:
        raise ValueError(f"--real-images: no image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return np.stack([center_crop_resize(Image.open(p), size) for p in paths])
