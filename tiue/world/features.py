"""The shapes feature network: a small CNN trained on the generator's labels.

Its penultimate features (64-d) play Inception's role for FID and PRDC; its heads (shape,
colour, background, size) read what a picture shows, and agreement with the caption plays
CLIP score's role. Saved as config.json + model.safetensors in one folder.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from tiue.data.shapes import COLOURS, SHAPES, SIZES
from tiue.files import atomic_directory
from tiue.world.checkpoints import LoopParts, StageCheckpoint, run_steps
from tiue.world.datasets import WorldTensors
from tiue.world.training import ProgressLog

__all__ = ["FeatureNetConfig", "ShapesFeatureNet", "FeatureNetSettings", "train_feature_net", "HEADS"]

# Head name -> number of classes; the label of the same name in the generator's labels.
HEADS = {"shape": len(SHAPES), "colour": len(COLOURS), "background": len(COLOURS), "size": len(SIZES)}


@dataclass
class FeatureNetConfig:
    channels: tuple[int, ...] = (32, 64, 128)
    feature_dim: int = 64
    resolution: int = 32


class ShapesFeatureNet(nn.Module):
    """Images (N, 3, H, W) in [-1, 1] -> penultimate features (N, feature_dim) and head logits."""

    def __init__(self, config: FeatureNetConfig = FeatureNetConfig()):
        super().__init__()
        self.config = config
        layers, previous = [], 3
        for i, channels in enumerate(config.channels):
            layers += [nn.Conv2d(previous, channels, 3, padding=1), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1), nn.SiLU()]
            if i < len(config.channels) - 1:
                layers.append(nn.AvgPool2d(2))
            previous = channels
        # Global max, not average, pooling: a small shape covers a few percent of the picture,
        # and averaging would dilute its edges and corners in the background.
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.embed = nn.Sequential(nn.Linear(previous, config.feature_dim), nn.SiLU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.feature_dim, n) for name, n in HEADS.items()})

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(self.body(images))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = self.features(images)
        return features, {name: head(features) for name, head in self.heads.items()}

    def save_pretrained(self, directory: str | Path) -> None:
        with atomic_directory(directory) as tmp:
            (tmp / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")
            state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ShapesFeatureNet":
        directory = Path(directory)
        if not (directory / "config.json").is_file():
            raise ValueError(f"feature network: expected a folder with config.json and model.safetensors, got {directory}")
        raw = json.loads((directory / "config.json").read_text())
        config = FeatureNetConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
        model = cls(config)
        state = load_file(str(directory / "model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()})
        return model.eval()


@dataclass
class FeatureNetSettings:
    steps: int = 1500
    batch_size: int = 128
    learning_rate: float = 2e-3
    seed: int = 0


def train_feature_net(
    settings: FeatureNetSettings, data: WorldTensors, config: FeatureNetConfig, checkpoint: StageCheckpoint | None = None
) -> ShapesFeatureNet:
    """Cross-entropy on every head (size and background are drawn even when the caption does
    not name them, so every picture has all four labels)."""
    torch.manual_seed(settings.seed)
    model = ShapesFeatureNet(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, settings.learning_rate, total_steps=settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    log = ProgressLog("features", settings.steps)

    def step_fn(step: int) -> None:
        index = torch.randint(len(data), (settings.batch_size,), generator=generator)
        _, logits = model(data.images[index])
        losses = {name: F.cross_entropy(logits[name], data.labels[name][index]) for name in HEADS}
        loss = sum(losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        log.step(step, loss=loss.item())

    run_steps(LoopParts({"features": model}, optimizer, schedule, generator), settings.steps, checkpoint, step_fn, log)
    return model.eval()
