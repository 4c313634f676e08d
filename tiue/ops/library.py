"""The `torch.ops.tiue.*` ops: schemas, fake implementations, per-device kernels, autograd.

Each op is a `torch.library.custom_op` (opaque to torch.compile, so a compiled graph calls it
without a break) with `register_fake` for tracing and one `register_kernel` per device type that
asks the op's dispatcher (tiue.ops.dispatch) which backend runs the call. Other devices get the
plain PyTorch default implementation.

`gaussian_kl` itself is a composite of `gaussian_kl_stats`, whose extra outputs (per-sample
mean and variance) let the backward pass read x only once; autograd flows through the stats op.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from tiue.ops import native_backend, reference, triton_backend
from tiue.ops.dispatch import OpDispatcher, register_dispatcher
from tiue.ops.layout import attention_output_layout
from tiue.ops.validation import (
    accumulation_dtype,
    check_ddim_combine,
    check_gaussian_kl,
    check_shared_kv_attention,
)

__all__ = [
    "ddim_combine_op",
    "gaussian_kl_backward_op",
    "gaussian_kl_stats_op",
    "shared_kv_attention_backward_op",
    "shared_kv_attention_op",
]

KERNEL_DEVICES = ("cpu", "cuda")

# -- dispatchers: which backend implements what ---------------------------------------------

_ddim_combine = register_dispatcher(
    OpDispatcher("ddim_combine", reference.ddim_combine_reference)
)
_ddim_combine.add("cpp", native_backend.ddim_combine, native_backend.ddim_combine_rejects)
_ddim_combine.add("cuda", native_backend.ddim_combine, native_backend.ddim_combine_cuda_rejects)
_ddim_combine.add("triton", triton_backend.ddim_combine, triton_backend.ddim_combine_rejects)

_gaussian_kl_stats = register_dispatcher(
    # On an H200 (fp16, 4 x 64 samples) the Triton KL took 221 us to eager PyTorch's 116: CUDA
    # tensors default to PyTorch; TIUE_KERNELS=triton|cuda still selects the kernels.
    OpDispatcher("gaussian_kl", reference.gaussian_kl_stats_reference, auto_order={"cuda": ()})
)
_gaussian_kl_stats.add("cpp", native_backend.gaussian_kl_stats)
_gaussian_kl_stats.add("cuda", native_backend.gaussian_kl_stats)
_gaussian_kl_stats.add("triton", triton_backend.gaussian_kl_stats)

_gaussian_kl_backward = register_dispatcher(
    OpDispatcher("gaussian_kl_backward", reference.gaussian_kl_backward_reference, auto_order={"cuda": ()})
)
_gaussian_kl_backward.add("cpp", native_backend.gaussian_kl_backward)
_gaussian_kl_backward.add("cuda", native_backend.gaussian_kl_backward)
_gaussian_kl_backward.add(
    "triton", triton_backend.gaussian_kl_backward, triton_backend.gaussian_kl_backward_rejects
)

_shared_kv_attention = register_dispatcher(
    # On an H200 (fp16, SD2.1 decoder sizes) SDPA ran 1.4-2.6x faster than the Triton kernel:
    # CUDA tensors default to SDPA; TIUE_KERNELS=triton still selects the kernel.
    OpDispatcher("shared_kv_attention", reference.shared_kv_attention_sdpa, auto_order={"cuda": ()})
)
_shared_kv_attention.add(
    "triton", triton_backend.shared_kv_attention, triton_backend.shared_kv_attention_rejects
)

_shared_kv_attention_backward = register_dispatcher(
    OpDispatcher("shared_kv_attention_backward", reference.shared_kv_attention_backward_sdpa)
)


def _register_device_kernels(op, kernel) -> None:
    for device in KERNEL_DEVICES:
        op.register_kernel(device)(kernel)


# -- ddim_combine -----------------------------------------------------------------------------


@torch.library.custom_op("tiue::ddim_combine", mutates_args=())
def ddim_combine_op(
    noise: Tensor,
    eps: Tensor,
    coeffs: list[float],
    scale: float = 1.0,
    out_dtype: Optional[torch.dtype] = None,
) -> Tensor:
    """scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]); contiguous, out_dtype."""
    check_ddim_combine(noise, eps, coeffs, out_dtype)
    return reference.ddim_combine_reference(noise, eps, coeffs, scale, out_dtype or noise.dtype)


def _ddim_combine_kernel(noise, eps, coeffs, scale=1.0, out_dtype=None):
    check_ddim_combine(noise, eps, coeffs, out_dtype)
    return _ddim_combine(noise, eps, coeffs, scale, out_dtype or noise.dtype)


_register_device_kernels(ddim_combine_op, _ddim_combine_kernel)


@ddim_combine_op.register_fake
def _(noise, eps, coeffs, scale=1.0, out_dtype=None):
    check_ddim_combine(noise, eps, coeffs, out_dtype)
    return noise.new_empty(noise.shape, dtype=out_dtype or noise.dtype)


def _ddim_combine_setup_context(ctx, inputs, output):
    noise, eps, coeffs, scale, _ = inputs
    ctx.coeffs, ctx.scale = list(coeffs), scale
    ctx.noise_dtype, ctx.eps_dtype = noise.dtype, eps.dtype


def _ddim_combine_backward(ctx, grad):
    # Linear in every input: each gradient is grad times a Python float (no device sync).
    grad_noise = (grad * (ctx.scale * ctx.coeffs[0])).to(ctx.noise_dtype)
    grad_eps = torch.stack([grad * (ctx.scale * c) for c in ctx.coeffs[1:]]).to(ctx.eps_dtype)
    return grad_noise, grad_eps, None, None, None


ddim_combine_op.register_autograd(_ddim_combine_backward, setup_context=_ddim_combine_setup_context)


# -- gaussian_kl ------------------------------------------------------------------------------


@torch.library.custom_op("tiue::gaussian_kl_stats", mutates_args=())
def gaussian_kl_stats_op(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample of x (N, ...): (KL to N(0, 1), mean, unbiased variance), each (N,)."""
    check_gaussian_kl(x)
    return reference.gaussian_kl_stats_reference(x)


def _gaussian_kl_stats_kernel(x):
    check_gaussian_kl(x)
    return _gaussian_kl_stats(x)


_register_device_kernels(gaussian_kl_stats_op, _gaussian_kl_stats_kernel)


@gaussian_kl_stats_op.register_fake
def _(x):
    check_gaussian_kl(x)
    acc = accumulation_dtype(x.dtype)
    return tuple(x.new_empty((x.shape[0],), dtype=acc) for _ in range(3))


@torch.library.custom_op("tiue::gaussian_kl_backward", mutates_args=())
def gaussian_kl_backward_op(
    x: Tensor, mean: Tensor, var: Tensor, grad_kl: Tensor, grad_mean: Tensor, grad_var: Tensor
) -> Tensor:
    """Gradient of gaussian_kl_stats' three outputs with respect to x (contiguous, x.dtype)."""
    return reference.gaussian_kl_backward_reference(x, mean, var, grad_kl, grad_mean, grad_var)


_register_device_kernels(gaussian_kl_backward_op, _gaussian_kl_backward)


@gaussian_kl_backward_op.register_fake
def _(x, mean, var, grad_kl, grad_mean, grad_var):
    return x.new_empty(x.shape)


def _gaussian_kl_setup_context(ctx, inputs, output):
    (x,) = inputs
    _, mean, var = output
    ctx.save_for_backward(x, mean, var)


def _gaussian_kl_stats_backward(ctx, grad_kl, grad_mean, grad_var):
    x, mean, var = ctx.saved_tensors
    return torch.ops.tiue.gaussian_kl_backward(x, mean, var, grad_kl, grad_mean, grad_var)


gaussian_kl_stats_op.register_autograd(
    _gaussian_kl_stats_backward, setup_context=_gaussian_kl_setup_context
)

# torch.ops.tiue.gaussian_kl(x) -> (N,): the KL alone. A composite op (no kernel of its own),
# so autograd and torch.compile see through it to gaussian_kl_stats.
_library = torch.library.Library("tiue", "FRAGMENT")
_library.define("gaussian_kl(Tensor x) -> Tensor")


def _gaussian_kl_composite(x: Tensor) -> Tensor:
    return torch.ops.tiue.gaussian_kl_stats(x)[0]


_library.impl("gaussian_kl", _gaussian_kl_composite, "CompositeImplicitAutograd")


# -- shared_kv_attention ----------------------------------------------------------------------


@torch.library.custom_op("tiue::shared_kv_attention", mutates_args=())
def shared_kv_attention_op(
    q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None
) -> Tensor:
    """softmax(q k^T * scale) v for q (K, B, H, N, D) and shared k, v (B, H, M, D)."""
    check_shared_kv_attention(q, k, v, scale)
    return reference.shared_kv_attention_sdpa(q, k, v, scale)


def _shared_kv_attention_kernel(q, k, v, scale=None):
    check_shared_kv_attention(q, k, v, scale)
    return _shared_kv_attention(q, k, v, scale)


_register_device_kernels(shared_kv_attention_op, _shared_kv_attention_kernel)


@shared_kv_attention_op.register_fake
def _(q, k, v, scale=None):
    check_shared_kv_attention(q, k, v, scale)
    return attention_output_layout(q)


@torch.library.custom_op("tiue::shared_kv_attention_backward", mutates_args=())
def shared_kv_attention_backward_op(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, scale: Optional[float] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of shared_kv_attention; dk and dv sum over the K query groups."""
    return reference.shared_kv_attention_backward_sdpa(grad_out, q, k, v, out, scale)


_register_device_kernels(shared_kv_attention_backward_op, _shared_kv_attention_backward)


@shared_kv_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, scale=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _attention_setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, output)


def _attention_backward(ctx, grad_out):
    q, k, v, out = ctx.saved_tensors
    grads = torch.ops.tiue.shared_kv_attention_backward(grad_out, q, k, v, out, ctx.scale)
    return (*grads, None)


shared_kv_attention_op.register_autograd(_attention_backward, setup_context=_attention_setup_context)
