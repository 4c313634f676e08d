"""Triton kernel for the backward of `tiue.ops.gaussian_kl`: one read of x, one write of dx.

From the forward's per-sample mean and variance and the incoming gradients of (KL, mean, var):
dx = a + b (x - mean), a = (g_kl mean + g_mean) / L, b = (g_kl (1 - 1/var) + 2 g_var) / (L - 1).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["gaussian_kl_backward"]

BLOCK = 1024


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
