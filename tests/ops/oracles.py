"""Float64 oracles the kernel tests compare against that production never runs.

(ddim_combine's and gaussian_kl's plain PyTorch backends compute in float64 given float64
inputs, so the tests use those directly, from the op modules.)
"""

from __future__ import annotations

import torch

from tiue.ops.checks import accumulation_dtype
from tiue.ops.shared_kv_attention import attention_output_layout

__all__ = ["shared_kv_attention_einsum"]


def shared_kv_attention_einsum(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v per group, written out with einsum (no fused kernel), in the
    output layout every backend returns."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc_dtype = accumulation_dtype(q.dtype)
    scores = torch.einsum("kbhnd,bhmd->kbhnm", q.to(acc_dtype), k.to(acc_dtype)) * scale
    probs = torch.softmax(scores, dim=-1)
    result = torch.einsum("kbhnm,bhmd->kbhnd", probs, v.to(acc_dtype))
    out = attention_output_layout(q)
    out.copy_(result)
    return out
