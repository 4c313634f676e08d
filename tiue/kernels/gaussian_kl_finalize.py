"""Triton kernel, stage 2 of `tiue.ops.gaussian_kl`: merge a sample's chunk statistics.

With chunk counts c_s, means m_s and M2_s: mean = sum c_s m_s / sum c_s and
M2 = sum (M2_s + c_s (m_s - mean)^2), the exact parallel-variance identity. Then
var = M2 / (L - 1) and KL = -0.5 (1 + log var - mean^2 - var).
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["gaussian_kl_finalize_kernel"]


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
