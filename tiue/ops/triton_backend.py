"""The "triton" backend: adapters around the launchers in tiue.kernels.

Kernel modules are imported on first use, so importing tiue.ops never imports triton (the
dispatcher asks a `*_rejects` only once the backend is known to be available). Each `*_rejects`
names what the kernels cannot take, or cannot run well, which then goes to plain PyTorch; the
limits are the kernel modules' own.
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

MAX_GRID_ROWS = 65535  # CUDA's limit on a grid's second axis
ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Opt-in shared memory per block of sm_90 (H100/H200), the largest of the GPUs tiue targets; the
# limit for CPU tensors (the interpreter has none) so that they follow the same rule.
SM90_SHARED_MEMORY_BYTES = 232_448


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
    if torch.float64 in (noise.dtype, eps.dtype, out_dtype):
        # Compiled Triton types Python float arguments as fp32, so the coefficients would be
        # rounded; the interpreter does not, which is why CPU tensors are refused as well.
        return "float64: compiled Triton passes the coefficients as fp32"
    if noise.dim() > 4:
        return f"noise has {noise.dim()} dims; the kernel takes at most 4"
    max_steps = _kernel_module("ddim_combine").MAX_STEPS
    if eps.shape[0] > max_steps:
        return f"K = {eps.shape[0]} > {max_steps}"
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
    return attention_rejection(
        q.dtype, q.device.type, keys=k.shape[2], head_dim=head_dim, groups=k_groups * batch * heads,
        shared_memory_limit=shared_memory_limit(q.device),
    )


def attention_rejection(
    dtype: torch.dtype, device_type: str, *, keys: int, head_dim: int, groups: int, shared_memory_limit: int
) -> str | None:
    """Why the attention kernel should not run this call, or None: the rule behind
    `shared_kv_attention_rejects`, on plain values so that it can be checked without a GPU."""
    module = _kernel_module("shared_kv_attention")
    if dtype not in ATTENTION_DTYPES:
        return f"dtype {dtype}: the kernel takes float16, bfloat16 and float32"
    if dtype == torch.float32 and device_type == "cuda":
        # fp32 tiles twice the size of fp16's spill registers (and above D = 128 exceed shared
        # memory): SDPA's fp32 kernels do better. The interpreter keeps fp32 for exactness tests.
        return "float32 on CUDA: the kernel's fp32 tiles spill registers; SDPA runs it"
    if keys > module.MAX_KEYS:
        return f"M = {keys} keys > {module.MAX_KEYS} (the kernel holds every key on chip)"
    if head_dim > module.MAX_HEAD_DIM:
        return f"head dim D = {head_dim} > {module.MAX_HEAD_DIM}"
    if groups > module.MAX_GROUP_PROGRAMS:
        return f"K*B*H = {groups} > {module.MAX_GROUP_PROGRAMS}"
    needed = module.launch_config(keys, head_dim).shared_memory_bytes(torch.empty((), dtype=dtype).element_size())
    if needed > shared_memory_limit:
        return f"needs {needed} bytes of shared memory per block, the device allows {shared_memory_limit}"
    return None


def shared_memory_limit(device: torch.device) -> int:
    """Opt-in shared memory per block of a CUDA device; sm_90's for CPU tensors."""
    if device.type != "cuda":
        return SM90_SHARED_MEMORY_BYTES
    properties = torch.cuda.get_device_properties(device)
    return int(getattr(properties, "shared_memory_per_block_optin", SM90_SHARED_MEMORY_BYTES))

