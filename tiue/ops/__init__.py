"""Performance-critical tensor ops of tiue, each also a torch op (`torch.ops.tiue.<name>`).

- `ddim_combine`: the loop-free DDIM chain's final latent in one pass.
- `gaussian_kl`: per-sample KL of N(mean, var) to N(0, 1), differentiable.
- `shared_kv_attention`: K query groups attending one shared key/value batch.

Every op runs on the best available backend: Triton (or the CUDA extension) for CUDA tensors,
the C++ extension for CPU tensors, plain PyTorch otherwise; `TIUE_KERNELS=torch|cpp|triton|cuda`
forces one. `backend_info()` says what is in use. Importing this package never needs a GPU,
triton or the compiled extension. See docs/kernels.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from tiue.ops import library as _library  # noqa: F401  (registers torch.ops.tiue.*)
from tiue.ops.dispatch import BackendUnavailableError, backend_info, last_backend
from tiue.ops.validation import coefficient_list

__all__ = [
    "BackendUnavailableError",
    "backend_info",
    "ddim_combine",
    "gaussian_kl",
    "last_backend",
    "shared_kv_attention",
]


def ddim_combine(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: Sequence[float] | torch.Tensor,
    scale: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]), accumulated in fp32.

    noise: (B, C, H, W); eps: (K, B, C, H, W), any strides; coeffs: K+1 floats (a sequence or
    a CPU tensor: never a device sync). Returns a contiguous tensor in `out_dtype` (default
    noise.dtype), reading each input once. Accumulates in fp64 when an input is fp64.
    Differentiable with respect to noise and eps.
    """
    return torch.ops.tiue.ddim_combine(
        noise, eps, coefficient_list(coeffs), float(scale), out_dtype
    )


def gaussian_kl(x: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mean(x_n), var(x_n)) || N(0, 1)) = -0.5 (1 + log var - mean^2 - var).

    x: (N, ...) with at least 2 elements per sample; var is the unbiased variance (divides by
    numel - 1). Returns (N,) in float32 whatever x's dtype (float64 for float64 x): the
    statistics are accumulated in fp32 and a KL is a loss term, not an activation.
    Differentiable; the backward reads x once.
    """
    return torch.ops.tiue.gaussian_kl(x)


def shared_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v where all K query groups attend one key/value batch.

    q: (K, B, H, N, D); k, v: (B, H, M, D), never repeated in memory; scale defaults to
    1/sqrt(D). Returns (K, B, H, N, D) in q's dtype, laid out as (K, B, N, H, D) in memory so
    that merging heads back to (K*B, N, H*D) is a view. Differentiable.
    """
    return torch.ops.tiue.shared_kv_attention(q, k, v, scale)
