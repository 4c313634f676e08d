"""GigaGAN's evaluation protocol for real text-to-image models: every image, real or generated,
is center-cropped to a square and resized to 256x256 with PIL's Lanczos filter before any
feature extractor sees it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["center_crop_resize", "load_image_folder", "list_image_files", "gigagan_clip_pixels", "IMAGE_SUFFIXES", "GIGAGAN_SIZE"]

GIGAGAN_SIZE = 256
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def center_crop_resize(image: Image.Image, size: int = GIGAGAN_SIZE) -> np.ndarray:
    """(size, size, 3) uint8: the largest centred square, resized with Lanczos."""
    image = image.convert("RGB")
    width, height = image.size
    side = min(width, height)
    # Offsets rounded as torchvision's center_crop (GigaGAN's CenterCropLongEdge) rounds them.
    left, top = round((width - side) / 2.0), round((height - side) / 2.0)
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.LANCZOS)
    return np.asarray(image, dtype=np.uint8)


def list_image_files(folder: str | Path, flag: str = "--real-images") -> list[Path]:
    """Image files of `folder`, recursively, sorted by path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{flag}: expected a folder of images, got {folder} (not a folder)")
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"{flag}: expected image files ({', '.join(IMAGE_SUFFIXES)}) in {folder}, found none")
    return paths


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


def _gigagan_clip_lookup() -> np.ndarray:
    import torch

    # GigaGAN's CLIP score path turns the 256 px image into a [-1, 1] tensor (ToTensor,
    # Normalize(0.5, 0.5)) and back with ((x + 1) * 127.5).to(uint8), which truncates: in
    # float32, 63 of the 256 levels come back one lower. Replaying it as a table keeps the
    # CLIP inputs pixel-identical to theirs.
    levels = torch.arange(256, dtype=torch.uint8).float().div(255).sub(0.5).div(0.5)
    return ((levels + 1.0) * 127.5).clamp(0.0, 255.0).to(torch.uint8).numpy()


def gigagan_clip_pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 as GigaGAN's CLIP score hands them to CLIP's preprocessor."""
    global _CLIP_LOOKUP
    if _CLIP_LOOKUP is None:
        _CLIP_LOOKUP = _gigagan_clip_lookup()
    return _CLIP_LOOKUP[images]


_CLIP_LOOKUP = None
