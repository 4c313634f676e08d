"""Tiny stand-ins for the feature extractors real evaluations load from local files."""

from pathlib import Path

import torch
from torch import nn


class TinyLayers(nn.Module):
    """As the TorchScript Inception's `layers`: images normalised to [-1, 1] in, features out."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).relu().mean(dim=(2, 3))


class TinyInception(nn.Module):
    """The calling conventions of the TorchScript Inception: `model(uint8 NCHW,
    return_features=True)` (legacy mode) and `model.layers((x - 128) / 128)` (clean-fid's clean
    mode, x float NCHW 299x299 in [0, 255])."""

    def __init__(self):
        super().__init__()
        self.layers = TinyLayers()

    def forward(self, images: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        features = self.layers((images.float() - 128) / 128)
        return features if return_features else features.softmax(dim=1)


def save_tiny_inception(path: Path) -> Path:
    torch.manual_seed(0)
    torch.jit.script(TinyInception()).save(str(path))
    return path


def save_tiny_clip(folder: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    from tiue.testing.tiny import build_tokenizer

    tokenizer = build_tokenizer(folder)
    vocab = tokenizer.get_vocab()
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=77,
                         bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"], pad_token_id=vocab["<|endoftext|>"]),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder
