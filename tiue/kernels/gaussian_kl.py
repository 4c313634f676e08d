"""Triton kernels of `tiue.ops.gaussian_kl`: the forward's per-sample KL, mean and unbiased
variance, and the backward, each with its launcher.

Forward, two stages. Small batches of large samples are split into chunks so the grid still
fills the device; a sample that is one chunk is finished in stage 1.
- Stage 1, program (n, s) reads chunk s of sample n once, tile by tile: each tile's mean and sum
  of squared deviations are exact in registers (two passes over data already on chip), and
  tiles are merged with Chan et al.'s pairwise update, so the variance never comes from
  E[x^2] - E[x]^2. It writes (count, mean, M2) of the chunk, or the finished stats if S == 1.
- Stage 2 merges a sample's chunks: with chunk counts c_s, means m_s and M2_s,
  mean = sum c_s m_s / sum c_s and M2 = sum (M2_s + c_s (m_s - mean)^2), the exact
  parallel-variance identity. Then var = M2 / (L - 1) and KL = -0.5 (1 + log var - mean^2 - var).

Backward: one read of x, one write of dx. From the forward's per-sample mean and variance and
the incoming gradients of (KL, mean, var): dx = a + b (x - mean), a = (g_kl mean + g_mean) / L,
b = (g_kl (1 - 1/var) + 2 g_var) / (L - 1).
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

__all__ = ["MAX_BACKWARD_SAMPLES", "gaussian_kl_backward", "gaussian_kl_forward"]

BLOCK = 1024  # elements per tile, forward and backward
MAX_CHUNKS = 1024  # per sample; stage 2 holds one sample's chunk stats in one tile
PROGRAMS_PER_SM = 4  # enough programs in flight to saturate memory bandwidth
# The backward's grid puts samples on its second axis, which CUDA limits to 65535.
MAX_BACKWARD_SAMPLES = 65535


# -- forward ------------------------------------------------------------------------------------


@triton.jit
def _partial_stats(
    partial_ptr,  # (N, S, 3) accumulation dtype: count, mean, M2 per chunk (unused if S == 1)
    kl_ptr,  # (N,) written only when S == 1
    mean_ptr,  # (N,) written only when S == 1
    var_ptr,  # (N,) written only when S == 1
    x_ptr,  # (N, L) with strides (x_sn, x_sl)
    L,
    x_sn,
    x_sl,
    CHUNK,  # elements per chunk, a multiple of BLOCK
    S,  # chunks per sample
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    n = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1)
    start = s.to(tl.int64) * CHUNK
    row = x_ptr + n * x_sn
    count = tl.zeros((), ACC_DTYPE)
    mean = tl.zeros((), ACC_DTYPE)
    m2 = tl.zeros((), ACC_DTYPE)
    for offset in range(0, CHUNK, BLOCK):
        offs = start + offset + tl.arange(0, BLOCK)
        mask = offs < L
        x = tl.load(row + offs * x_sl, mask=mask, other=0).to(ACC_DTYPE)
        tile_count = tl.sum(mask.to(ACC_DTYPE), axis=0)
        tile_mean = tl.sum(x, axis=0) / tl.maximum(tile_count, 1)
        dev = tl.where(mask, x - tile_mean, 0)
        tile_m2 = tl.sum(dev * dev, axis=0)
        total = count + tile_count
        weight = tile_count / tl.maximum(total, 1)
        delta = tile_mean - mean
        mean += delta * weight
        m2 += tile_m2 + delta * delta * count * weight
        count = total
    if S == 1:
        var = m2 / (L - 1)
        tl.store(mean_ptr + n, mean)
        tl.store(var_ptr + n, var)
        tl.store(kl_ptr + n, -0.5 * (1.0 + tl.log(var) - mean * mean - var))
    else:
        slot = partial_ptr + (n * S + s) * 3
        tl.store(slot, count)
        tl.store(slot + 1, mean)
        tl.store(slot + 2, m2)


@triton.jit
def gaussian_kl_partial_stats_kernel(
    partial_ptr, kl_ptr, mean_ptr, var_ptr, x_ptr, L, x_sn, x_sl,
    CHUNK,  # a runtime value: one compiled kernel serves every sample length
    S,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _partial_stats(partial_ptr, kl_ptr, mean_ptr, var_ptr, x_ptr, L, x_sn, x_sl, CHUNK, S, ACC_DTYPE, BLOCK)


@triton.jit
def gaussian_kl_partial_stats_kernel_interpreted(
    partial_ptr, kl_ptr, mean_ptr, var_ptr, x_ptr, L, x_sn, x_sl,
    # A constexpr for the interpreter only: Triton 3.6's interpreter hands a runtime int to the
    # kernel as a 1-element array, which `range` cannot take under numpy 2 (it asks for a
    # 0-d array). A Python int loops fine and the interpreter compiles nothing.
    CHUNK: tl.constexpr,
    S,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _partial_stats(partial_ptr, kl_ptr, mean_ptr, var_ptr, x_ptr, L, x_sn, x_sl, CHUNK, S, ACC_DTYPE, BLOCK)


@triton.jit
def gaussian_kl_finalize_kernel(
    kl_ptr,  # (N,)
    mean_ptr,  # (N,)
    var_ptr,  # (N,)
    partial_ptr,  # (N, S, 3): count, mean, M2 per chunk
    L,
    S,
    BLOCK_S: tl.constexpr,  # >= S
):
    n = tl.program_id(0).to(tl.int64)
    chunk = tl.arange(0, BLOCK_S)
    mask = chunk < S
    slot = partial_ptr + (n * S + chunk) * 3
    count = tl.load(slot, mask=mask, other=0)
    chunk_mean = tl.load(slot + 1, mask=mask, other=0)
    chunk_m2 = tl.load(slot + 2, mask=mask, other=0)
    mean = tl.sum(count * chunk_mean, axis=0) / tl.sum(count, axis=0)
    dev = chunk_mean - mean
    var = tl.sum(chunk_m2 + count * dev * dev, axis=0) / (L - 1)
    tl.store(mean_ptr + n, mean)
    tl.store(var_ptr + n, var)
    tl.store(kl_ptr + n, -0.5 * (1.0 + tl.log(var) - mean * mean - var))


def _interpreted() -> bool:
    # Read from the environment, as Triton itself does (`triton.knobs` only exists from 3.4).
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


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
    kernel = gaussian_kl_partial_stats_kernel_interpreted if _interpreted() else gaussian_kl_partial_stats_kernel
    kernel[(samples, chunks)](
        partial, kl, mean, var, x, length, *x.stride(), chunk, chunks,
        ACC_DTYPE=acc_dtype, BLOCK=BLOCK, num_warps=4,
    )
    if chunks > 1:
        gaussian_kl_finalize_kernel[(samples,)](
            kl, mean, var, partial, length, chunks,
            BLOCK_S=triton.next_power_of_2(chunks), num_warps=1,
        )
    return kl, mean, var


# -- backward -----------------------------------------------------------------------------------


@triton.jit
def gaussian_kl_backward_kernel(
    grad_x_ptr,  # (N, L) contiguous, x's dtype
    x_ptr,  # (N, L) with strides (x_sn, x_sl)
    mean_ptr,  # (N,) contiguous
    var_ptr,  # (N,) contiguous
    grad_kl_ptr,  # (N,) stride g_kl_s (0 when broadcast)
    grad_mean_ptr,  # (N,) stride g_mean_s
    grad_var_ptr,  # (N,) stride g_var_s
    L,
    x_sn,
    x_sl,
    g_kl_s,
    g_mean_s,
    g_var_s,
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    tile = tl.program_id(0).to(tl.int64)
    n = tl.program_id(1).to(tl.int64)
    mean = tl.load(mean_ptr + n).to(ACC_DTYPE)
    var = tl.load(var_ptr + n).to(ACC_DTYPE)
    g_kl = tl.load(grad_kl_ptr + n * g_kl_s).to(ACC_DTYPE)
    g_mean = tl.load(grad_mean_ptr + n * g_mean_s).to(ACC_DTYPE)
    g_var = tl.load(grad_var_ptr + n * g_var_s).to(ACC_DTYPE)
    a = (g_kl * mean + g_mean) / L
    b = (g_kl * (1.0 - 1.0 / var) + 2.0 * g_var) / (L - 1)
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    mask = offs < L
    x = tl.load(x_ptr + n * x_sn + offs * x_sl, mask=mask, other=0).to(ACC_DTYPE)
    grad = a + b * (x - mean)
    tl.store(grad_x_ptr + n * L + offs, grad.to(grad_x_ptr.dtype.element_ty), mask=mask)


def gaussian_kl_backward(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    grad_kl: torch.Tensor,
    grad_mean: torch.Tensor,
    grad_var: torch.Tensor,
) -> torch.Tensor:
    """x: (N, L) with any strides; the rest (N,). Returns dx as a contiguous (N, L) tensor."""
    samples, length = x.shape
    grad_x = torch.empty((samples, length), dtype=x.dtype, device=x.device)
    if grad_x.numel() == 0:
        return grad_x
    acc_dtype = tl.float64 if torch.float64 in (x.dtype, mean.dtype) else tl.float32
    gaussian_kl_backward_kernel[(triton.cdiv(length, BLOCK), samples)](
        grad_x, x, mean.contiguous(), var.contiguous(), grad_kl, grad_mean, grad_var,
        length, *x.stride(), grad_kl.stride(0), grad_mean.stride(0), grad_var.stride(0),
        ACC_DTYPE=acc_dtype, BLOCK=BLOCK, num_warps=4,
    )
    return grad_x
