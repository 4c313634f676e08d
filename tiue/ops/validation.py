"""Argument checks shared by every backend of the ops (and by their fake implementations).

Each error names the argument, the value received and what is accepted. The checks only read
shapes, dtypes and devices, so they are safe on fake tensors and cost nothing on the GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "FLOAT_DTYPES",
    "accumulation_dtype",
    "check_ddim_combine",
    "check_gaussian_kl",
    "check_shared_kv_attention",
    "coefficient_list",
]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or float64 when any input is float64 (fp64 inputs keep fp64 accuracy)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _check_float(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def _check_same_device(op: str, named: dict[str, torch.Tensor]) -> None:
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")


def coefficient_list(coeffs: Sequence[float] | torch.Tensor) -> list[float]:
    """coeffs as Python floats, without ever reading a device tensor (that would sync)."""
    if isinstance(coeffs, torch.Tensor):
        if coeffs.device.type != "cpu":
            raise ValueError(
                "ddim_combine: coeffs must be a Python sequence or a CPU tensor (reading a device "
                f"tensor would force a sync), got a tensor on {coeffs.device}"
            )
        return [float(c) for c in coeffs.reshape(-1).tolist()]
    try:
        return [float(c) for c in coeffs]
    except TypeError as error:
        raise TypeError(
            f"ddim_combine: coeffs must be a sequence of floats or a CPU tensor, got {coeffs!r:.80}"
        ) from error


def check_ddim_combine(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: Sequence[float],
    out_dtype: torch.dtype | None,
) -> None:
    op = "ddim_combine"
    _check_float(op, "noise", noise)
    _check_float(op, "eps", eps)
    if eps.dim() != noise.dim() + 1 or eps.shape[1:] != noise.shape:
        raise ValueError(
            f"ddim_combine: eps must have shape (K, *noise.shape) = (K, {tuple(noise.shape)}), "
            f"got {tuple(eps.shape)}"
        )
    if len(coeffs) != eps.shape[0] + 1:
        raise ValueError(
            f"ddim_combine: coeffs must hold K+1 = {eps.shape[0] + 1} values, got {len(coeffs)}"
        )
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"ddim_combine: out_dtype must be None or one of float16, bfloat16, float32, float64, "
            f"got {out_dtype}"
        )
    _check_same_device(op, {"noise": noise, "eps": eps})


def check_gaussian_kl(x: torch.Tensor) -> None:
    _check_float("gaussian_kl", "x", x)
    if x.dim() < 2 or x[0].numel() < 2:
        raise ValueError(
            "gaussian_kl: x must have shape (N, ...) with at least 2 elements per sample (the "
            f"unbiased variance divides by numel - 1), got {tuple(x.shape)}"
        )


def check_shared_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> None:
    op = "shared_kv_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        _check_float(op, name, t)
    if q.dim() != 5:
        raise ValueError(f"{op}: q must have shape (K, B, H, N, D), got {tuple(q.shape)}")
    if k.dim() != 4:
        raise ValueError(f"{op}: k must have shape (B, H, M, D), got {tuple(k.shape)}")
    batch, heads, head_dim = q.shape[1], q.shape[2], q.shape[4]
    if k.shape[0] != batch or k.shape[1] != heads or k.shape[3] != head_dim:
        raise ValueError(
            f"{op}: k must have shape (B, H, M, D) = ({batch}, {heads}, M, {head_dim}) to match "
            f"q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if k.shape[2] < 1:
        raise ValueError(f"{op}: k must hold at least one key (M >= 1), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"{op}: v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"{op}: q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}"
        )
    if scale is not None and not scale > 0:
        raise ValueError(f"{op}: scale must be None or a positive float, got {scale!r}")
    _check_same_device(op, {"q": q, "k": k, "v": v})
