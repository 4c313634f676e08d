"""Device and dtype choices shared by the sampler, the CLI and the trainer."""

from __future__ import annotations

import os

import torch

__all__ = ["DTYPE_NAMES", "process_device", "resolve_device", "resolve_dtype"]

DTYPE_NAMES = {
    "fp16": torch.float16,
    "float16": torch.float16,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp32": torch.float32,
    "float32": torch.float32,
}


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`device` as a torch.device; None means CUDA when available, else CPU.

    Under torchrun or accelerate launch (LOCAL_RANK set), a CUDA device without an index is this
    process's own GPU, cuda:{LOCAL_RANK}, and becomes the current device before anything loads:
    otherwise every rank would share cuda:0.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device: not a valid torch device: {device!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} requested but CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device: expected cpu or cuda (optionally cuda:N), got {str(device)!r}")
    if device.type == "cuda":
        device = process_device(device, os.environ.get("LOCAL_RANK"), torch.cuda.device_count())
        torch.cuda.set_device(device)
    return device


def process_device(device: torch.device, local_rank: str | None, cuda_count: int) -> torch.device:
    """The CUDA device this process uses: `device` itself when it names an index or no launcher
    set LOCAL_RANK, else cuda:{LOCAL_RANK}."""
    if device.type != "cuda" or device.index is not None or local_rank is None:
        return device
    try:
        rank = int(local_rank)
    except ValueError:
        raise ValueError(f"LOCAL_RANK: expected a non-negative integer, got {local_rank!r}") from None
    if not 0 <= rank < cuda_count:
        raise ValueError(
            f"LOCAL_RANK: process {rank} needs its own GPU, but this machine has {cuda_count}; "
            f"launch at most {cuda_count} processes per machine, or pass --device cuda:N"
        )
    return torch.device("cuda", rank)


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`dtype` as a torch.dtype; None means fp16 on CUDA, fp32 elsewhere."""
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPE_NAMES.values():
            raise ValueError(f"dtype: expected float16, bfloat16 or float32, got {dtype}")
        return dtype
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPE_NAMES)}, got {dtype!r}")
    return DTYPE_NAMES[dtype]
