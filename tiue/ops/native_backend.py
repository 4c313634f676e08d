"""The "cpp" and "cuda" backends: thin adapters around tiue._C's `*_native` ops.

The same native op serves both: PyTorch's dispatcher sends CPU tensors to the C++ kernel and
CUDA tensors to the CUDA kernel. Each `*_rejects` names what the kernels cannot take, which
then goes to plain PyTorch.
"""

from __future__ import annotations

import torch

from tiue.ops.layout import as_nchw, per_sample_rows

__all__ = [
    "CUDA_MAX_STEPS",
    "ddim_combine",
    "ddim_combine_rejects",
    "ddim_combine_cuda_rejects",
    "gaussian_kl_backward",
    "gaussian_kl_stats",
]

CUDA_MAX_STEPS = 64  # csrc/cuda/launchers.h kMaxSteps: coefficients travel in kernel parameters


def ddim_combine(noise, eps, coeffs, scale, out_dtype):
    noise4, eps5 = as_nchw(noise, eps)
    out = torch.ops.tiue.ddim_combine_native(noise4, eps5, coeffs, scale, out_dtype)
    return out.view(noise.shape)


def ddim_combine_rejects(noise, eps, coeffs, scale, out_dtype) -> str | None:
    if noise.dim() > 4:
        return f"noise has {noise.dim()} dims; the kernel takes at most 4"
    if noise.dtype != eps.dtype:
        return f"noise ({noise.dtype}) and eps ({eps.dtype}) differ in dtype"
    return None


def ddim_combine_cuda_rejects(noise, eps, coeffs, scale, out_dtype) -> str | None:
    if eps.shape[0] > CUDA_MAX_STEPS:
        return f"K = {eps.shape[0]} > {CUDA_MAX_STEPS} coefficients"
    return ddim_combine_rejects(noise, eps, coeffs, scale, out_dtype)


def gaussian_kl_stats(x):
    return torch.ops.tiue.gaussian_kl_stats_native(per_sample_rows(x))


def gaussian_kl_backward(x, mean, var, grad_kl, grad_mean, grad_var):
    grad = torch.ops.tiue.gaussian_kl_backward_native(
        per_sample_rows(x), mean, var, grad_kl, grad_mean, grad_var
    )
    return grad.view(x.shape)
