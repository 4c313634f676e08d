"""Interpolation between prompt embeddings (paper Fig. 9): a fixed noise, a moving prompt."""

from __future__ import annotations

import torch

__all__ = ["interpolate_prompts"]


def interpolate_prompts(
    start: torch.Tensor, end: torch.Tensor, num: int, method: str = "linear"
) -> torch.Tensor:
    """`num` embeddings from `start` to `end` inclusive, stacked on a new first axis.

    Args:
        start, end: prompt embeddings of the same shape, e.g. (L, D) or (1, L, D) from
            `TiUEPipeline.encode_prompt`; a leading batch axis of 1 is dropped.
        num: number of embeddings, >= 2.
        method: "linear", or "slerp" (spherical, per token vector).

    Returns:
        (num, L, D), ready for `pipe(prompt_embeds=...)`.
    """
    if start.shape != end.shape:
        raise ValueError(f"start, end: shapes must match, got {tuple(start.shape)} and {tuple(end.shape)}")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num: expected an int >= 2, got {num!r}")
    if method not in ("linear", "slerp"):
        raise ValueError(f"method: expected 'linear' or 'slerp', got {method!r}")
    if start.dim() == 3 and start.shape[0] == 1:
        start, end = start[0], end[0]
    weights = torch.linspace(0, 1, num, dtype=torch.float64, device=start.device)
    a, b = start.double(), end.double()
    if method == "linear":
        out = torch.stack([(1 - w) * a + w * b for w in weights])
    else:
        out = torch.stack([_slerp(a, b, w) for w in weights])
    return out.to(start.dtype)


def _slerp(a: torch.Tensor, b: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    a_unit = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b_unit = b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    omega = torch.acos((a_unit * b_unit).sum(-1, keepdim=True).clamp(-1, 1))
    sin_omega = torch.sin(omega)
    # Nearly parallel vectors: slerp tends to lerp, which is also numerically safe.
    parallel = sin_omega.abs() < 1e-6
    lerp = (1 - w) * a + w * b
    slerp = (torch.sin((1 - w) * omega) * a + torch.sin(w * omega) * b) / torch.where(parallel, 1.0, sin_omega)
    return torch.where(parallel, lerp, slerp)
