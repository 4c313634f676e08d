"""A small CLIPTextModel for the shapes world (trained jointly with the teacher UNet)."""

from __future__ import annotations

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

__all__ = ["build_world_text_encoder"]


def build_world_text_encoder(
    tokenizer: CLIPTokenizer, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, seed: int = 0
) -> CLIPTextModel:
    """A CLIP text transformer sized for a few hundred captions of up to ten words."""
    torch.manual_seed(seed)
    vocab = tokenizer.get_vocab()
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    return CLIPTextModel(config)
