"""Laying out generated images: one grid picture for a batch (the CLI's grid.png, the trainer's
validation previews)."""

from __future__ import annotations

import math

__all__ = ["make_grid"]


def make_grid(images: list, columns: int | None = None):
    """One PIL image with `images` laid out row by row (a square-ish grid by default)."""
    from PIL import Image

    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid
