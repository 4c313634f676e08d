"""The one text-encoding path: prompts to CLIP token ids, token ids to the embeddings the UNet
cross-attends to. The sampler, the trainer and the shapes world's teacher training all use it,
so the padding, truncation and attention-mask rules cannot drift apart."""

from __future__ import annotations

import torch

__all__ = ["embed_tokens", "encode_prompt_embeddings", "tokenize_prompts"]


def tokenize_prompts(tokenizer, prompts: list[str]):
    """Token ids and attention masks, padded to the tokenizer's maximum length as SD's pipelines do."""
    return tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )


def embed_tokens(
    text_encoder, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, device: torch.device
) -> torch.Tensor:
    """(B, L, D) embeddings in the encoder's dtype; the mask is passed only when the encoder's
    config asks for it (`use_attention_mask`, as diffusers does). Differentiable."""
    if not getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = None
    elif attention_mask is not None:
        attention_mask = attention_mask.to(device)
    embeds = text_encoder(input_ids.to(device), attention_mask=attention_mask)[0]
    return embeds.to(dtype=text_encoder.dtype, device=device)


@torch.no_grad()
def encode_prompt_embeddings(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    """(len(prompts), L, D) text embeddings of frozen-encoder inference, in one encoder call."""
    tokens = tokenize_prompts(tokenizer, prompts)
    return embed_tokens(text_encoder, tokens.input_ids, tokens.attention_mask, device)
