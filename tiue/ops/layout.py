"""Shape views the compiled kernels expect, and the output layouts every backend shares."""

from __future__ import annotations

import torch

__all__ = ["as_nchw", "attention_output_layout", "per_sample_rows"]


def as_nchw(noise: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """noise as (B, C, H, W) and eps as (K, B, C, H, W), adding leading size-1 dims (views).

    Only for noise of at most 4 dims; the kernels reject more and plain PyTorch takes those.
    """
    missing = 4 - noise.dim()
    for _ in range(missing):
        noise = noise.unsqueeze(0)
        eps = eps.unsqueeze(1)
    return noise, eps


def per_sample_rows(x: torch.Tensor) -> torch.Tensor:
    """x (N, ...) as (N, L): a view when the layout allows (the usual case), else a copy."""
    return x.reshape(x.shape[0], -1)


def attention_output_layout(q: torch.Tensor) -> torch.Tensor:
    """An empty (K, B, H, N, D) output laid out as (K, B, N, H, D) in memory.

    That is the layout an attention processor needs next: merging the heads back into
    (K*B, N, H*D) is then a view. Every backend and the fake return exactly this layout.
    """
    k_groups, batch, heads, tokens, head_dim = q.shape
    buffer = q.new_empty((k_groups, batch, tokens, heads, head_dim))
    return buffer.permute(0, 1, 3, 2, 4)
