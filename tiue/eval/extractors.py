"""Feature extractors: images (N, H, W, 3) uint8 in, (N, D) float features out.

ShapesFeatures: the shapes world's feature network (penultimate features; its heads read shape,
colour, background and size). InceptionFeatures: a TorchScript Inception supplied as a local
file, called as `model(images_uint8_nchw, return_features=True)` -- the calling convention of
the 2048-d pool features file that StyleGAN's and clean-fid's metrics use. ClipModel: a
transformers CLIP folder supplied locally, for CLIP score (image-text cosine).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

__all__ = ["ShapesFeatures", "InceptionFeatures", "ClipModel", "load_shapes_features"]


def _batches(images: np.ndarray, batch_size: int):
    for start in range(0, len(images), batch_size):
        yield images[start : start + batch_size]


class ShapesFeatures:
    """The shapes feature network on images of the world's resolution."""

    name = "shapes"

    def __init__(self, network, batch_size: int = 256):
        self.network = network.eval()
        self.batch_size = batch_size

    @torch.no_grad()
    def _run(self, images: np.ndarray):
        from tiue.world.datasets import images_to_tensor

        side = self.network.config.resolution
        if images.ndim != 4 or images.shape[1:] != (side, side, 3):
            raise ValueError(f"images: the shapes feature network takes (N, {side}, {side}, 3) uint8, got {images.shape}")
        for chunk in _batches(images, self.batch_size):
            yield self.network(images_to_tensor(np.ascontiguousarray(chunk)))

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([f.numpy() for f, _ in self._run(images)]) if len(images) else np.zeros((0, self.network.config.feature_dim))

    def features_and_predictions(self, images: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Features and each head's predicted class index (N,)."""
        features, predictions = [], {}
        for f, logits in self._run(images):
            features.append(f.numpy())
            for name, value in logits.items():
                predictions.setdefault(name, []).append(value.argmax(1).numpy())
        return np.concatenate(features), {k: np.concatenate(v) for k, v in predictions.items()}


def load_shapes_features(folder: str | Path | None = None) -> ShapesFeatures:
    """The feature network in `folder`, default the embedded "shapes-features"."""
    from tiue.embedded import EMBEDDED_DIR
    from tiue.world.features import ShapesFeatureNet

    folder = Path(folder) if folder is not None else EMBEDDED_DIR / "shapes-features"
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"--features: no feature network in {folder}; train one with "
            "`tiue world train --config configs/shapes-features.yaml` and pass its final/ folder"
        )
    return ShapesFeatures(ShapesFeatureNet.from_pretrained(folder))


class InceptionFeatures:
    """A TorchScript feature network from a local file (no download is ever attempted)."""

    name = "inception"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"--inception: no such file: {path} (a TorchScript Inception, e.g. inception-2015-12-05.pt)")
        self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def features(self, images: np.ndarray) -> np.ndarray:
        out = []
        for chunk in _batches(images, self.batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).to(self.device)
            out.append(self.model(batch, return_features=True).float().cpu().numpy())
        return np.concatenate(out)


class ClipModel:
    """A transformers CLIP model, processor and tokenizer from one local folder."""

    name = "clip"

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"--clip: expected a local CLIP model folder (config.json, weights, tokenizer, preprocessor), got {folder}")
        self.model = CLIPModel.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
        self.processor = CLIPImageProcessor.from_pretrained(str(folder))
        self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        self.device, self.batch_size = torch.device(device), batch_size

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray) -> np.ndarray:
        out = []
        for chunk in _batches(images, self.batch_size):
            pixels = self.processor(images=list(chunk), return_tensors="pt").pixel_values.to(self.device)
            out.append(_as_tensor(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str]) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True, return_tensors="pt").to(self.device)
            out.append(_as_tensor(self.model.get_text_features(**tokens)).float().cpu().numpy())
        return np.concatenate(out)

    features = image_embeddings


def _as_tensor(output) -> torch.Tensor:
    # Newer transformers return a model output object from get_*_features; older ones a tensor.
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output if getattr(output, "pooler_output", None) is not None else output[0]
