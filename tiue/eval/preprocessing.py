"""Images as the evaluation reads them.

GigaGAN's protocol for real text-to-image models: every image, real or generated, is
center-cropped to a square and resized to 256x256 with PIL's Lanczos filter before any feature
extractor sees it. clean-fid's "clean" resize then takes each image to Inception's 299x299.
Reference folders are listed by clean-fid's rule, and every file is checked (readable, not a
decompression bomb) from its header before any work starts.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

__all__ = ["center_crop_resize", "clean_resize", "load_image_folder", "list_image_files", "open_image", "check_image_files",
           "gigagan_clip_pixels", "IMAGE_EXTENSIONS", "GIGAGAN_SIZE", "INCEPTION_SIZE"]

GIGAGAN_SIZE = 256
INCEPTION_SIZE = 299
# clean-fid's folder rule (0.1.35, cleanfid/utils.py EXTENSIONS, globbed per extension): these
# extensions, case-sensitive, hidden files and folders skipped (glob's `*` and `**` skip names
# starting with "."). Its .npy arrays are not images and are not read here.
IMAGE_EXTENSIONS = ("bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp", "JPEG", "JPG", "PNG")


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


def clean_resize(image: np.ndarray, size: int = INCEPTION_SIZE) -> np.ndarray:
    """(size, size, 3) float32 in [0, 255]: clean-fid's "clean" resize of an (H, W, 3) image.

    Each channel becomes a 32-bit float PIL image (mode "F"), is resized with PIL's bicubic
    filter (antialiased when shrinking) and kept unquantised, clipped to [0, 255] against the
    filter's overshoot (Parmar et al. 2022, "On Aliased Resizing and Surprising Subtleties in
    GAN Evaluation"). Written here so that tiue's default protocol needs no clean-fid install;
    tests/eval/test_clean_resize.py checks it against the filter written out in numpy and
    against numbers clean-fid produced.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image: expected an (H, W, 3) array, got shape {image.shape}")
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[:, :, c], np.float32), mode="F")
                           .resize((size, size), Image.BICUBIC)) for c in range(3)]
    return np.clip(np.stack(channels, axis=2), 0, 255).astype(np.float32)


def _hidden(relative: Path) -> bool:
    return any(part.startswith(".") for part in relative.parts)


def list_image_files(folder: str | Path, flag: str = "--real-images") -> list[Path]:
    """Image files of `folder`, recursively, by clean-fid's rule (IMAGE_EXTENSIONS, hidden names
    skipped), sorted by path string as clean-fid sorts them (KID's subsets follow this order)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{flag}: expected a folder of images, got {folder} (not a folder)")
    paths = []
    for root, folders, files in os.walk(folder, followlinks=True):
        folders[:] = [name for name in folders if not name.startswith(".")]
        paths += [Path(root, name) for name in files
                  if not name.startswith(".") and name.rpartition(".")[2] in IMAGE_EXTENSIONS and "." in name]
    paths.sort(key=str)
    if not paths:
        raise ValueError(f"{flag}: expected image files ({', '.join('.' + e for e in IMAGE_EXTENSIONS)}) in {folder}, found none")
    return paths


def open_image(path: str | Path, flag: str = "--real-images") -> Image.Image:
    """`path` opened lazily (header only), refused in one line when unreadable or when its
    pixel count passes PIL's decompression-bomb limit, before any pixel is decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # checked below, as an error
            image = Image.open(path)
    except Image.DecompressionBombError as error:
        raise ValueError(f"{flag}: {path} is too large to decode ({error}); expected at most {limit} pixels "
                         "(PIL's decompression-bomb limit)") from error
    except (UnidentifiedImageError, OSError) as error:
        raise ValueError(f"{flag}: cannot read {path} as an image ({error})") from error
    if limit is not None and image.size[0] * image.size[1] > limit:
        image.close()
        raise ValueError(f"{flag}: {path} is too large to decode ({image.size[0]} x {image.size[1]} pixels); expected at "
                         f"most {limit} pixels (PIL's decompression-bomb limit)")
    return image


def check_image_files(paths: list[Path], flag: str = "--real-images") -> None:
    """Every file readable as an image of a sane size, from its header (no decoding)."""
    for path in paths:
        open_image(path, flag).close()


def load_image_folder(folder: str | Path, size: int = GIGAGAN_SIZE, limit: int | None = None) -> np.ndarray:
    """Every image file of `folder` (list_image_files' rule and order), preprocessed: (N, size, size, 3)."""
    paths = list_image_files(folder)[:limit]
    check_image_files(paths)
    return np.stack([center_crop_resize(open_image(p), size) for p in paths])


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
