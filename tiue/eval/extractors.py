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

__all__ = ["ShapesFeatures", "InceptionFeatures", "ClipModel", "load_shapes_features", "FID_PROTOCOLS", "INCEPTION_URL",
           "GIGAGAN_CLIP_PREFIX"]

# GigaGAN's CLIP score prepends this to every caption (after the start token), following
# CLIPScore (Hessel et al. 2021, arXiv:2104.08718).
GIGAGAN_CLIP_PREFIX = "A photo depicts"


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


INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
FID_PROTOCOLS = ("clean", "legacy_tensorflow")


class InceptionFeatures:
    """A TorchScript Inception from a local file (no download is ever attempted).

    protocol "clean" (clean-fid's clean mode, what GigaGAN's evaluation and the paper's
    Table 1 use): each image is resized to 299x299 as clean-fid's resizer does it (PIL bicubic
    on float32 channels, no quantisation; tiue's own code, preprocessing.clean_resize), then `model.layers((x - 128) / 128)` gives the 2048-d
    pool features, as clean-fid's InceptionV3W(resize_inside=False) computes them.
    "legacy_tensorflow": uint8 images go to `model(x, return_features=True)`, which resizes
    inside the network (StyleGAN's / clean-fid's legacy mode; tiue's protocol before 0.x).
    """

    name = "inception"

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", batch_size: int = 64, protocol: str = "clean"):
        path = Path(path)
        if protocol not in FID_PROTOCOLS:
            raise ValueError(f"--fid-protocol: expected {' or '.join(FID_PROTOCOLS)}, got {protocol!r}")
        if not path.is_file():
            raise ValueError(
                f"--inception: no such file: {path}; expected a local TorchScript Inception (inception-2015-12-05.pt, "
                f"downloadable from {INCEPTION_URL}); put it anywhere and pass its path (see docs/evaluation.md)"
            )
        self.resize = None
        if protocol == "clean":
            from tiue.eval.preprocessing import clean_resize

            self.resize = clean_resize
        try:
            self.model = torch.jit.load(str(path), map_location=device).eval()
        except RuntimeError as error:
            raise ValueError(f"--inception: expected a TorchScript file, could not load {path}: {error}") from error
        self.device, self.batch_size, self.protocol = torch.device(device), batch_size, protocol
        self.name = "inception" if protocol == "clean" else f"inception-{protocol}"

    @torch.no_grad()
    def _batch(self, chunk: np.ndarray) -> torch.Tensor:
        if self.resize is None:
            batch = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).to(self.device)
            return self.model(batch, return_features=True)
        resized = np.stack([self.resize(image) for image in chunk])  # (B, 299, 299, 3) float32 in [0, 255]
        batch = torch.from_numpy(resized).permute(0, 3, 1, 2).to(self.device)
        return self.model.layers((batch - 128) / 128).reshape(len(chunk), -1)

    def features(self, images: np.ndarray) -> np.ndarray:
        return np.concatenate([self._batch(chunk).float().cpu().numpy() for chunk in _batches(images, self.batch_size)])


class ClipModel:
    """A transformers CLIP model, processor and tokenizer from one local folder."""

    name = "clip"

    def __init__(self, folder: str | Path, device: str | torch.device = "cpu", batch_size: int = 64):
        from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise ValueError(f"--clip: expected a local CLIP model folder (config.json, weights, tokenizer, preprocessor), got {folder}")
        try:
            self.model = CLIPModel.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
            self.processor = CLIPImageProcessor.from_pretrained(str(folder))
            self.tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(f"--clip: expected a local transformers CLIP folder, could not load {folder}: {error}") from error
        self.device, self.batch_size = torch.device(device), batch_size
        # Named in the results: the hub id the folder was saved from when recorded, else its name.
        self.model_name = getattr(self.model.config, "_name_or_path", "") or folder.resolve().name
        if Path(self.model_name).is_absolute():
            self.model_name = folder.resolve().name

    @torch.no_grad()
    def image_embeddings(self, images: np.ndarray) -> np.ndarray:
        out = []
        for chunk in _batches(images, self.batch_size):
            pixels = self.processor(images=list(chunk), return_tensors="pt").pixel_values.to(self.device)
            out.append(_as_tensor(self.model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return np.concatenate(out)

    @torch.no_grad()
    def text_embeddings(self, texts: list[str], prefix: str | None = GIGAGAN_CLIP_PREFIX) -> np.ndarray:
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids, mask = self._tokens(texts[start : start + self.batch_size], prefix)
            features = self.model.get_text_features(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            out.append(_as_tensor(features).float().cpu().numpy())
        return np.concatenate(out)

    def _tokens(self, texts: list[str], prefix: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """GigaGAN's token surgery: [start] + prefix tokens + caption tokens (+ [end]), cut to
        the context length with the last token forced to [end] when the cut removed it."""
        limit = self.model.config.text_config.max_position_embeddings
        end = self.tokenizer.eos_token_id
        extra = self.tokenizer(prefix, add_special_tokens=False)["input_ids"] if prefix else []
        rows = []
        for ids in self.tokenizer(list(texts), truncation=True, max_length=limit)["input_ids"]:
            row = (ids[:1] + extra + ids[1:])[:limit]
            row[-1] = end if len(row) == limit else row[-1]
            rows.append(row)
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), end, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids, mask

    features = image_embeddings


def _as_tensor(output) -> torch.Tensor:
    # Newer transformers return a model output object from get_*_features; older ones a tensor.
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output if getattr(output, "pooler_output", None) is not None else output[0]
