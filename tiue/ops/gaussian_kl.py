"""`gaussian_kl`: per-sample KL of N(mean, var) to N(0, 1), and its backends.

Here: the public function; the `torch.ops.tiue.gaussian_kl_stats` custom op (KL, mean and
variance per sample; schema, fake, autograd) with its backward op `gaussian_kl_backward`, and
`gaussian_kl` itself, a composite returning the KL alone; the argument checks; the plain
PyTorch forward and backward; and the backend tables (C++/CUDA through tiue._C, Triton through
tiue.kernels.gaussian_kl). The stats op's extra outputs let the backward read x only once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from tiue.ops.checks import FLOAT_DTYPES, accumulation_dtype, check_float
from tiue.ops.dispatch import (
    OpDispatcher,
    kernel_module,
    note_choice,
    on_device_of,
    plain_torch_ops_active,
    register_device_kernels,
    register_dispatcher,
)

__all__ = [
    "BACKWARD_DISPATCHER",
    "STATS_DISPATCHER",
    "gaussian_kl",
    "gaussian_kl_backward_op",
    "gaussian_kl_backward_torch",
    "gaussian_kl_composite",
    "gaussian_kl_stats_op",
    "gaussian_kl_stats_torch",
]


def gaussian_kl(x: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mean(x_n), var(x_n)) || N(0, 1)) = -0.5 (1 + log var - mean^2 - var).

    x: (N, ...) with at least 2 elements per sample; var is the unbiased variance (divides by
    numel - 1). Returns (N,) in float32 whatever x's dtype (float64 for float64 x): the
    statistics are accumulated in fp32 and a KL is a loss term, not an activation.
    Differentiable; the backward reads x once.
    """
    if plain_torch_ops_active() or torch.compiler.is_compiling():
        return gaussian_kl_composite(x)
    if not isinstance(x, Tensor) or (torch.is_grad_enabled() and x.requires_grad):
        return torch.ops.tiue.gaussian_kl(x)
    kernel = STATS_DISPATCHER.eager_choice(x.device.type)
    if kernel is not None and kernel.backend in ("cpp", "cuda") and x.dim() >= 2 and x.dtype in FLOAT_DTYPES:
        # No autograd needed: straight to the C++/CUDA op (registered from C++), which checks
        # its input itself; the Python check runs only to word its error.
        try:
            kl = torch.ops.tiue.gaussian_kl_stats_native(_per_sample_rows(x))[0]
        except RuntimeError:
            check_gaussian_kl(x)
            raise
        note_choice("gaussian_kl", x.device.type, kernel.backend)
        return kl
    return _stats_kernel(x)[0]


def gaussian_kl_composite(x: Tensor) -> Tensor:
    """What a compiled graph (and plain_torch_ops) gets: the KL in standard ops, which inductor
    fuses into its reductions (on an H200 the Triton KL took 221 us to eager PyTorch's 116)."""
    check_gaussian_kl(x)
    return gaussian_kl_stats_torch(x)[0]


def check_gaussian_kl(x: torch.Tensor) -> None:
    check_float("gaussian_kl", "x", x)
    if x.dim() < 2 or x[0].numel() < 2:
        raise ValueError(
            "gaussian_kl: x must have shape (N, ...) with at least 2 elements per sample (the "
            f"unbiased variance divides by numel - 1), got {tuple(x.shape)}"
        )


# -- backends -----------------------------------------------------------------------------------


def gaussian_kl_stats_torch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample n: (KL, mean, unbiased variance), KL = -0.5 (1 + log var - mean^2 - var).

    torch.var_mean's variance is a stable one (never E[x^2] - E[x]^2); fp32 (fp64 for fp64).
    """
    flat = x.reshape(x.shape[0], -1).to(accumulation_dtype(x.dtype))
    var, mean = torch.var_mean(flat, dim=1, correction=1)
    kl = -0.5 * (1.0 + torch.log(var) - mean * mean - var)
    return kl, mean, var


def gaussian_kl_backward_torch(
    x: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    grad_kl: torch.Tensor,
    grad_mean: torch.Tensor,
    grad_var: torch.Tensor,
) -> torch.Tensor:
    """Gradient of (KL, mean, var) with respect to x, given the forward's per-sample stats.

    With L elements per sample: d mean/dx = 1/L and d var/dx = 2 (x - mean) / (L - 1), so
    dx = a + b (x - mean) with a = (g_kl mean + g_mean) / L, b = (g_kl (1 - 1/var) + 2 g_var) / (L - 1).
    """
    numel = x[0].numel()
    a = (grad_kl * mean + grad_mean) / numel
    b = (grad_kl * (1.0 - 1.0 / var) + 2.0 * grad_var) / (numel - 1)
    per_sample = (x.shape[0],) + (1,) * (x.dim() - 1)
    grad = a.view(per_sample) + b.view(per_sample) * (x.to(mean.dtype) - mean.view(per_sample))
    return grad.to(x.dtype).contiguous()


def _per_sample_rows(x: torch.Tensor) -> torch.Tensor:
    """x (N, ...) as (N, L): a view when the layout allows (the usual case), else a copy."""
    return x.reshape(x.shape[0], -1)


def _native_stats(x):
    # One native op serves both: PyTorch sends CPU tensors to the C++ kernel, CUDA ones to CUDA.
    return torch.ops.tiue.gaussian_kl_stats_native(_per_sample_rows(x))


def _native_backward(x, mean, var, grad_kl, grad_mean, grad_var):
    grad = torch.ops.tiue.gaussian_kl_backward_native(
        _per_sample_rows(x), mean, var, grad_kl, grad_mean, grad_var
    )
    return grad.view(x.shape)


def _triton_stats(x):
    with on_device_of(x):
        return kernel_module("gaussian_kl").gaussian_kl_forward(_per_sample_rows(x))


def _triton_backward(x, mean, var, grad_kl, grad_mean, grad_var):
    module = kernel_module("gaussian_kl")
    with on_device_of(x):
        grad = module.gaussian_kl_backward(_per_sample_rows(x), mean, var, grad_kl, grad_mean, grad_var)
    return grad.view(x.shape)


def _triton_backward_rejects(x, *stats) -> str | None:
    max_samples = kernel_module("gaussian_kl").MAX_BACKWARD_SAMPLES
    if x.shape[0] > max_samples:
        return f"N = {x.shape[0]} samples > {max_samples}"
    return None


STATS_DISPATCHER = register_dispatcher(
    # H200, fp16, 2026-12-04 (host / device us per call, 4 x 1 and 4 x 64 samples): the CUDA
    # extension 45 / 3.8 and 44 / 6.5, eager PyTorch 128 / 16.7 and 138 / 27.4, Triton 216 / 3.0 and
    # 167 / 7.8. The extension wins on both clocks; Triton only where it is built alone.
    OpDispatcher("gaussian_kl", gaussian_kl_stats_torch, auto_order={"cuda": ("cuda", "triton")})
)
STATS_DISPATCHER.add("cpp", _native_stats)
STATS_DISPATCHER.add("cuda", _native_stats)
STATS_DISPATCHER.add("triton", _triton_stats)

BACKWARD_DISPATCHER = register_dispatcher(
    # Forward and backward through autograd on the same H200: eager PyTorch 776 / 42 us (host /
    # device), the extension 1078 / 29, Triton 1432 / 28 (4 x 1 samples): host-bound, PyTorch stays.
    OpDispatcher("gaussian_kl_backward", gaussian_kl_backward_torch, auto_order={"cuda": ()})
)
BACKWARD_DISPATCHER.add("cpp", _native_backward)
BACKWARD_DISPATCHER.add("cuda", _native_backward)
BACKWARD_DISPATCHER.add("triton", _triton_backward, _triton_backward_rejects)


# -- the torch ops ------------------------------------------------------------------------------


@torch.library.custom_op("tiue::gaussian_kl_stats", mutates_args=())
def gaussian_kl_stats_op(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per sample of x (N, ...): (KL to N(0, 1), mean, unbiased variance), each (N,)."""
    check_gaussian_kl(x)
    return gaussian_kl_stats_torch(x)


def _stats_kernel(x):
    check_gaussian_kl(x)
    return STATS_DISPATCHER(x)


register_device_kernels(gaussian_kl_stats_op, _stats_kernel)


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
    return gaussian_kl_backward_torch(x, mean, var, grad_kl, grad_mean, grad_var)


register_device_kernels(gaussian_kl_backward_op, BACKWARD_DISPATCHER)


@gaussian_kl_backward_op.register_fake
def _(x, mean, var, grad_kl, grad_mean, grad_var):
    return x.new_empty(x.shape)


def _setup_context(ctx, inputs, output):
    (x,) = inputs
    _, mean, var = output
    ctx.save_for_backward(x, mean, var)


def _stats_backward(ctx, grad_kl, grad_mean, grad_var):
    x, mean, var = ctx.saved_tensors
    return torch.ops.tiue.gaussian_kl_backward(x, mean, var, grad_kl, grad_mean, grad_var)


gaussian_kl_stats_op.register_autograd(_stats_backward, setup_context=_setup_context)

# torch.ops.tiue.gaussian_kl(x) -> (N,): the KL alone. A composite op (no kernel of its own),
# so autograd and torch.compile see through it to gaussian_kl_stats.
_library = torch.library.Library("tiue", "FRAGMENT")
_library.define("gaussian_kl(Tensor x) -> Tensor")


def _gaussian_kl_composite(x: Tensor) -> Tensor:
    return torch.ops.tiue.gaussian_kl_stats(x)[0]


_library.impl("gaussian_kl", _gaussian_kl_composite, "CompositeImplicitAutograd")
