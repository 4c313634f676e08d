"""Argument checks and the dtype rule every op shares (used by its fake implementation too).

Each error names the argument, the value received and what is accepted. The checks only read
shapes, dtypes and devices, so they are safe on fake tensors and cost nothing on the GPU.
"""

from __future__ import annotations

import torch

__all__ = ["FLOAT_DTYPES", "accumulation_dtype", "check_float", "check_same_device"]

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def accumulation_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32, or float64 when any input is float64 (fp64 inputs keep fp64 accuracy)."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def check_float(op: str, name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{op}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def check_same_device(op: str, named: dict[str, torch.Tensor]) -> None:
    devices = {name: t.device for name, t in named.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{name} on {device}" for name, device in devices.items())
        raise ValueError(f"{op}: all tensors must be on one device, got {listed}")
