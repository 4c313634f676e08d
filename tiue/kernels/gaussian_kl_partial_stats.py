"""Triton kernel, stage 1 of `tiue.ops.gaussian_kl`: (count, mean, M2) of each chunk of a sample.

Program (n, s) reads chunk s of sample n once, tile by tile: each tile's mean and sum of squared
deviations are exact in registers (two passes over data already on chip), and tiles are merged
with Chan et al.'s pairwise update, so the variance never comes from E[x^2] - E[x]^2.
When a sample is one chunk (S == 1) the program finishes the job and writes KL, mean and var.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["gaussian_kl_partial_stats_kernel"]


@triton.jit
def gaussian_kl_partial_stats_kernel(
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
