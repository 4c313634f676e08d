"""Launcher of `tiue.ops.gaussian_kl`'s forward: per-sample KL, mean and unbiased variance.

Small batches of large samples are split into chunks so the grid still fills the device
(stage 1 per chunk, stage 2 merges); a sample that is one chunk is finished in stage 1.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from tiue.kernels.gaussian_kl_finalize import gaussian_kl_finalize_kernel
from tiue.kernels.gaussian_kl_partial_stats import gaussian_kl_partial_stats_kernel

__all__ = ["gaussian_kl_forward"]

BLOCK = 1024
MAX_CHUNKS = 1024  # per sample; stage 2 holds one sample's chunk stats in one tile
PROGRAMS_PER_SM = 4  # enough programs in flight to saturate memory bandwidth


def _target_programs(device: torch.device) -> int:
    if device.type == "cuda":
        return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return 1  # the interpreter runs programs one after another: fewer is faster


def gaussian_kl_forward(
    x: torch.Tensor, chunks: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: (N, L) with any strides. Returns (kl, mean, var), each (N,), fp32 (fp64 for fp64 x).

    chunks: how many pieces to split each sample into (default: enough to fill the device).
    """
    samples, length = x.shape
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    kl, mean, var = (torch.empty(samples, dtype=acc, device=x.device) for _ in range(3))
    if samples == 0:
        return kl, mean, var
    tiles = triton.cdiv(length, BLOCK)
    if chunks is None:
        chunks = triton.cdiv(_target_programs(x.device), samples)
    chunks = min(max(1, chunks), tiles, MAX_CHUNKS)
    chunk = triton.cdiv(tiles, chunks) * BLOCK
    chunks = triton.cdiv(length, chunk)
    partial = torch.empty((samples, chunks, 3) if chunks > 1 else (1,), dtype=acc, device=x.device)
    acc_dtype = tl.float64 if acc == torch.float64 else tl.float32
    gaussian_kl_partial_stats_kernel[(samples, chunks)](
        partial, kl, mean, var, x, length, *x.stride(), chunk, chunks,
        ACC_DTYPE=acc_dtype, BLOCK=BLOCK, num_warps=4,
    )
    if chunks > 1:
        gaussian_kl_finalize_kernel[(samples,)](
            kl, mean, var, partial, length, chunks,
            BLOCK_S=triton.next_power_of_2(chunks), num_warps=1,
        )
    return kl, mean, var
