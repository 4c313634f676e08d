"""The generator's scenes as training tensors, drawn once per run (drawing costs ~2 ms each)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tiue.data.shapes import DEFAULT_WORLD, WorldConfig, generate

__all__ = ["WorldTensors", "draw_training_set", "images_to_tensor"]


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


@dataclass
class WorldTensors:
    images: torch.Tensor  # (N, 3, H, W) in [-1, 1]
    captions: list[str]
    labels: dict[str, torch.Tensor]  # name -> (N,) int64

    def __len__(self) -> int:
        return len(self.captions)


def draw_training_set(size: int, seed: int, world: WorldConfig = DEFAULT_WORLD) -> WorldTensors:
    if size < 1:
        raise ValueError(f"dataset_size: expected an integer >= 1, got {size}")
    batch = generate(size, seed, world)
    labels = {k: torch.from_numpy(v) for k, v in batch.labels.items()}
    return WorldTensors(images_to_tensor(batch.images), batch.captions, labels)
