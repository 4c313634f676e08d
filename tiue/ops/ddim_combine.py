"""`ddim_combine`: the loop-free DDIM chain's final latent in one pass, and its backends.

scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]), accumulated in fp32 (fp64 for fp64
inputs). Here: the public function, the `torch.ops.tiue.ddim_combine` custom op (schema, fake,
autograd), its argument checks, the plain PyTorch fallback, and the backend table (C++/CUDA
through tiue._C, Triton through tiue.kernels.ddim_combine) with what each kernel refuses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from tiue.ops.checks import FLOAT_DTYPES, accumulation_dtype, check_float, check_same_device
from tiue.ops.dispatch import (
    OpDispatcher,
    kernel_module,
    note_choice,
    on_device_of,
    plain_torch_ops_active,
    register_device_kernels,
    register_dispatcher,
)

__all__ = ["DISPATCHER", "ddim_combine", "ddim_combine_composite", "ddim_combine_op", "ddim_combine_torch"]

# csrc/cuda/launchers.h kMaxSteps: the CUDA kernel takes its coefficients as kernel parameters,
# at most this many eps steps. Keep in step with that header.
CUDA_MAX_STEPS = 64


def ddim_combine(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: Sequence[float] | torch.Tensor,
    scale: float = 1.0,
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]), accumulated in fp32.

    noise: (B, C, H, W); eps: (K, B, C, H, W), any strides; coeffs: K+1 floats (a sequence or
    a CPU tensor: never a device sync). Returns a contiguous tensor in `out_dtype` (default
    noise.dtype), reading each input once. Accumulates in fp64 when an input is fp64.
    Differentiable with respect to noise and eps.
    """
    coeffs, scale = coefficient_list(coeffs), float(scale)
    if plain_torch_ops_active() or torch.compiler.is_compiling():
        return ddim_combine_composite(noise, eps, coeffs, scale, out_dtype)
    if not isinstance(noise, Tensor) or not isinstance(eps, Tensor) or (
        torch.is_grad_enabled() and (noise.requires_grad or eps.requires_grad)
    ):
        return torch.ops.tiue.ddim_combine(noise, eps, coeffs, scale, out_dtype)
    return _ddim_combine_eager(noise, eps, coeffs, scale, out_dtype)


def ddim_combine_composite(
    noise: Tensor, eps: Tensor, coeffs: list[float], scale: float, out_dtype: torch.dtype | None
) -> Tensor:
    """What a compiled graph (and plain_torch_ops) gets: the expression in standard ops, which
    inductor fuses with its neighbours into one kernel. An opaque custom op would stop that
    fusion, and on an H200 the fused expression ran 3x faster than the op's own kernel launch."""
    check_ddim_combine(noise, eps, coeffs, out_dtype)
    return ddim_combine_torch(noise, eps, coeffs, scale, out_dtype or noise.dtype)


_NATIVE_BACKENDS = ("cpp", "cuda")


def _ddim_combine_eager(noise, eps, coeffs, scale, out_dtype):
    """An eager call that needs no autograd: straight to the C++/CUDA op (registered from C++)
    when that is the backend, checked by the kernel itself (the Python checks run only to word
    its error); otherwise the Python checks and the dispatcher, without the custom-op layer."""
    out_dtype = out_dtype or noise.dtype
    kernel = DISPATCHER.eager_choice(noise.device.type)
    if (
        kernel is not None
        and kernel.backend in _NATIVE_BACKENDS
        and noise.dim() == 4
        and noise.dtype == eps.dtype
        and out_dtype in FLOAT_DTYPES
        and (kernel.backend == "cpp" or eps.dim() != 5 or eps.shape[0] <= CUDA_MAX_STEPS)
    ):
        try:
            out = torch.ops.tiue.ddim_combine_native(noise, eps, coeffs, scale, out_dtype)
        except RuntimeError:
            check_ddim_combine(noise, eps, coeffs, out_dtype)  # raises the worded error if it applies
            raise
        note_choice("ddim_combine", noise.device.type, kernel.backend)
        return out
    return _ddim_combine_kernel(noise, eps, coeffs, scale, out_dtype)


# -- argument checks ----------------------------------------------------------------------------


def coefficient_list(coeffs: Sequence[float] | torch.Tensor) -> list[float]:
    """coeffs as Python floats, without ever reading a device tensor (that would sync)."""
    if isinstance(coeffs, torch.Tensor):
        if coeffs.device.type != "cpu":
            raise ValueError(
                "ddim_combine: coeffs must be a Python sequence or a CPU tensor (reading a device "
                f"tensor would force a sync), got a tensor on {coeffs.device}"
            )
        return [float(c) for c in coeffs.reshape(-1).tolist()]
    try:
        return [float(c) for c in coeffs]
    except TypeError as error:
        raise TypeError(
            f"ddim_combine: coeffs must be a sequence of floats or a CPU tensor, got {coeffs!r:.80}"
        ) from error


def check_ddim_combine(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: Sequence[float],
    out_dtype: torch.dtype | None,
) -> None:
    op = "ddim_combine"
    check_float(op, "noise", noise)
    check_float(op, "eps", eps)
    if eps.dim() != noise.dim() + 1 or eps.shape[1:] != noise.shape:
        raise ValueError(
            f"ddim_combine: eps must have shape (K, *noise.shape) = (K, {tuple(noise.shape)}), "
            f"got {tuple(eps.shape)}"
        )
    if len(coeffs) != eps.shape[0] + 1:
        raise ValueError(
            f"ddim_combine: coeffs must hold K+1 = {eps.shape[0] + 1} values, got {len(coeffs)}"
        )
    if out_dtype is not None and out_dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"ddim_combine: out_dtype must be None or one of float16, bfloat16, float32, float64, "
            f"got {out_dtype}"
        )
    check_same_device(op, {"noise": noise, "eps": eps})


# -- backends -----------------------------------------------------------------------------------


def ddim_combine_torch(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: list[float],
    scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The plain PyTorch backend: the expression in fp32 (fp64 for fp64 input), contiguous like
    every kernel's output so that the fake can promise one layout."""
    acc_dtype = accumulation_dtype(noise.dtype, eps.dtype)
    acc = noise.to(acc_dtype) * coeffs[0]
    for k, c in enumerate(coeffs[1:]):
        acc = acc + eps[k].to(acc_dtype) * c
    return (acc * scale).to(out_dtype).contiguous()


def _as_nchw(noise: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """noise as (B, C, H, W) and eps as (K, B, C, H, W), adding leading size-1 dims (views).

    Only for noise of at most 4 dims; the kernels reject more and plain PyTorch takes those.
    """
    missing = 4 - noise.dim()
    for _ in range(missing):
        noise = noise.unsqueeze(0)
        eps = eps.unsqueeze(1)
    return noise, eps


def _native(noise, eps, coeffs, scale, out_dtype):
    # One native op serves both: PyTorch sends CPU tensors to the C++ kernel, CUDA ones to CUDA.
    noise4, eps5 = _as_nchw(noise, eps)
    out = torch.ops.tiue.ddim_combine_native(noise4, eps5, coeffs, scale, out_dtype)
    return out.view(noise.shape)


def _native_rejects(noise, eps, coeffs, scale, out_dtype) -> str | None:
    if noise.dim() > 4:
        return f"noise has {noise.dim()} dims; the kernel takes at most 4"
    if noise.dtype != eps.dtype:
        return f"noise ({noise.dtype}) and eps ({eps.dtype}) differ in dtype"
    return None


def _cuda_rejects(noise, eps, coeffs, scale, out_dtype) -> str | None:
    if eps.shape[0] > CUDA_MAX_STEPS:
        return f"K = {eps.shape[0]} > {CUDA_MAX_STEPS} coefficients"
    return _native_rejects(noise, eps, coeffs, scale, out_dtype)


def _triton(noise, eps, coeffs, scale, out_dtype):
    noise4, eps5 = _as_nchw(noise, eps)
    with on_device_of(noise):
        out = kernel_module("ddim_combine").ddim_combine(noise4, eps5, coeffs, scale, out_dtype)
    return out.view(noise.shape)


def _triton_rejects(noise, eps, coeffs, scale, out_dtype) -> str | None:
    if torch.float64 in (noise.dtype, eps.dtype, out_dtype):
        # Compiled Triton types Python float arguments as fp32, so the coefficients would be
        # rounded; the interpreter does not, which is why CPU tensors are refused as well.
        return "float64: compiled Triton passes the coefficients as fp32"
    if noise.dim() > 4:
        return f"noise has {noise.dim()} dims; the kernel takes at most 4"
    max_steps = kernel_module("ddim_combine").MAX_STEPS
    if eps.shape[0] > max_steps:
        return f"K = {eps.shape[0]} > {max_steps}"
    return None


DISPATCHER = register_dispatcher(OpDispatcher("ddim_combine", ddim_combine_torch))
DISPATCHER.add("cpp", _native, _native_rejects)
DISPATCHER.add("cuda", _native, _cuda_rejects)
DISPATCHER.add("triton", _triton, _triton_rejects)


# -- the torch op ---------------------------------------------------------------------------------


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
    return ddim_combine_torch(noise, eps, coeffs, scale, out_dtype or noise.dtype)


def _ddim_combine_kernel(noise, eps, coeffs, scale=1.0, out_dtype=None):
    check_ddim_combine(noise, eps, coeffs, out_dtype)
    return DISPATCHER(noise, eps, coeffs, scale, out_dtype or noise.dtype)


register_device_kernels(ddim_combine_op, _ddim_combine_kernel)


@ddim_combine_op.register_fake
def _(noise, eps, coeffs, scale=1.0, out_dtype=None):
    check_ddim_combine(noise, eps, coeffs, out_dtype)
    return noise.new_empty(noise.shape, dtype=out_dtype or noise.dtype)


def _setup_context(ctx, inputs, output):
    noise, eps, coeffs, scale, _ = inputs
    ctx.coeffs, ctx.scale = list(coeffs), scale
    ctx.noise_dtype, ctx.eps_dtype = noise.dtype, eps.dtype


def _backward(ctx, grad):
    # Linear in every input: each gradient is grad times a Python float (no device sync).
    grad_noise = (grad * (ctx.scale * ctx.coeffs[0])).to(ctx.noise_dtype)
    grad_eps = torch.stack([grad * (ctx.scale * c) for c in ctx.coeffs[1:]]).to(ctx.eps_dtype)
    return grad_noise, grad_eps, None, None, None


ddim_combine_op.register_autograd(_backward, setup_context=_setup_context)
