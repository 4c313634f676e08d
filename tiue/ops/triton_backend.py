"""The "triton" backend: adapters around the launchers in tiue.kernels.

Kernel modules are imported on first use, so importing tiue.ops never imports triton. Each
`*_rejects` names what the kernels cannot take, which then goes to plain PyTorch.
"""

from __future__ import annotations

import contextlib
import importlib

import torch

from tiue.ops.layout import as_nchw, attention_output_layout, per_sample_rows

__all__ = [
    "ddim_combine",
    "ddim_combine_rejects",
    "gaussian_kl_backward",
    "gaussian_kl_backward_rejects",
    "gaussian_kl_stats",
    "shared_kv_attention",
    "shared_kv_attention_rejects",
]

MAX_STEPS = 64  # each K compiles its own kernel (the coefficients are a K+1 tuple argument)
MAX_GRID_ROWS = 65535  # CUDA's limit on a grid's second axis
# Mirrors of tiue.kernels.shared_kv_attention's limits, checked without importing triton.
ATTENTION_MAX_KEYS = 128
ATTENTION_MAX_HEAD_DIM = 256
ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _kernel_module(name: str):
    return importlib.import_module(f"tiue.kernels.{name}")


def _on_device_of(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's."""
    if tensor.device.type == "cuda":
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def ddim_combine(noise, eps, coeffs, scale, out_dtype):
    noise4, eps5 = as_nchw(noise, eps)
    with _on_device_of(noise):
        out = _kernel_module("ddim_combine").ddim_combine(noise4, eps5, coeffs, scale, out_dtype)
    return out.view(noise.shape)


def ddim_combine_rejects(noise, eps, coeffs, scale, out_dtype) -> str | None:
    if noise.dim() > 4:
        return f"noise has {noise.dim()} dims; the kernel takes at most 4"
    if eps.shape[0] > MAX_STEPS:
        return f"K = {eps.shape[0]} > {MAX_STEPS}"
    return None


def gaussian_kl_stats(x):
    with _on_device_of(x):
        return _kernel_module("gaussian_kl_forward").gaussian_kl_forward(per_sample_rows(x))


def gaussian_kl_backward(x, mean, var, grad_kl, grad_mean, grad_var):
    module = _kernel_module("gaussian_kl_backward")
    with _on_device_of(x):
        grad = module.gaussian_kl_backward(per_sample_rows(x), mean, var, grad_kl, grad_mean, grad_var)
    return grad.view(x.shape)


def gaussian_kl_backward_rejects(x, *stats) -> str | None:
    if x.shape[0] > MAX_GRID_ROWS:
        return f"N = {x.shape[0]} samples > {MAX_GRID_ROWS}"
    return None


def shared_kv_attention(q, k, v, scale):
    module = _kernel_module("shared_kv_attention")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with _on_device_of(q):
        return module.shared_kv_attention(attention_output_layout(q), q, k, v, scale)


def shared_kv_attention_rejects(q, k, v, scale) -> str | None:
    k_groups, batch, heads, _, head_dim = q.shape
    if q.dtype not in ATTENTION_DTYPES:
        return f"dtype {q.dtype}: the kernel takes float16, bfloat16 and float32"
    if k.shape[2] > ATTENTION_MAX_KEYS:
        return f"M = {k.shape[2]} keys > {ATTENTION_MAX_KEYS} (the kernel holds every key on chip)"
    if head_dim > ATTENTION_MAX_HEAD_DIM:
        return f"head dim D = {head_dim} > {ATTENTION_MAX_HEAD_DIM}"
    if k_groups * batch * heads > MAX_GRID_ROWS:
        return f"K*B*H = {k_groups * batch * heads} > {MAX_GRID_ROWS}"
    return None

