"""Performance-critical tensor ops of tiue.

Each op has one public entry point here. Until compiled backends are registered this
module holds the plain PyTorch definitions, which stay the reference implementation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["ddim_combine"]


def ddim_combine(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: Sequence[float] | torch.Tensor,
    scale: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]), accumulated in fp32.

    noise: (B, C, H, W); eps: (K, B, C, H, W); coeffs: K+1 floats (a sequence or CPU tensor).
    """
    coeffs = _coeff_list(coeffs)
    if eps.dim() != noise.dim() + 1 or eps.shape[1:] != noise.shape:
        raise ValueError(
            f"ddim_combine: eps must have shape (K, *noise.shape) = (K, {tuple(noise.shape)}), "
            f"got {tuple(eps.shape)}"
        )
    if len(coeffs) != eps.shape[0] + 1:
        raise ValueError(
            f"ddim_combine: coeffs must hold K+1 = {eps.shape[0] + 1} values, got {len(coeffs)}"
        )
    out_dtype = noise.dtype if out_dtype is None else out_dtype
    acc = noise.float() * coeffs[0]
    for k, c in enumerate(coeffs[1:]):
        acc = acc + eps[k].float() * c
    return (acc * scale).to(out_dtype)


def _coeff_list(coeffs: Sequence[float] | torch.Tensor) -> list[float]:
    if isinstance(coeffs, torch.Tensor):
        if coeffs.device.type != "cpu":
            raise ValueError(
                "ddim_combine: coeffs must be a Python sequence or a CPU tensor (reading a device "
                f"tensor would force a sync), got a tensor on {coeffs.device}"
            )
        return [float(c) for c in coeffs.reshape(-1).tolist()]
    return [float(c) for c in coeffs]
