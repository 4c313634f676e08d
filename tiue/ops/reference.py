"""Plain PyTorch definitions of the ops: the "torch" backend and the tests' reference.

Given float64 inputs they compute in float64, which is what the tests compare every backend
against. Outputs are contiguous, like every compiled kernel's, so the fake implementations can
promise one layout whatever backend runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tiue.ops.layout import attention_output_layout
from tiue.ops.validation import accumulation_dtype

__all__ = [
    "ddim_combine_reference",
    "gaussian_kl_backward_reference",
    "gaussian_kl_stats_reference",
    "shared_kv_attention_backward_reference",
    "shared_kv_attention_backward_sdpa",
    "shared_kv_attention_reference",
    "shared_kv_attention_sdpa",
]


# -- ddim_combine ---------------------------------------------------------------------------


def ddim_combine_reference(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: list[float],
    scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]) in fp32 (fp64 for fp64 input)."""
    acc_dtype = accumulation_dtype(noise.dtype, eps.dtype)
    acc = noise.to(acc_dtype) * coeffs[0]
    for k, c in enumerate(coeffs[1:]):
        acc = acc + eps[k].to(acc_dtype) * c
    return (acc * scale).to(out_dtype).contiguous()


# -- gaussian_kl ------------------------------------------------------------------------------


def gaussian_kl_stats_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per sample n: (KL, mean, unbiased variance), KL = -0.5 (1 + log var - mean^2 - var).

    torch.var_mean's variance is a stable one (never E[x^2] - E[x]^2); fp32 (fp64 for fp64).
    """
    flat = x.reshape(x.shape[0], -1).to(accumulation_dtype(x.dtype))
    var, mean = torch.var_mean(flat, dim=1, correction=1)
    kl = -0.5 * (1.0 + torch.log(var) - mean * mean - var)
    return kl, mean, var


def gaussian_kl_backward_reference(
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


# -- shared_kv_attention ----------------------------------------------------------------------


def shared_kv_attention_reference(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v per group, written out with einsum (no fused kernel)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc_dtype = accumulation_dtype(q.dtype)
    scores = torch.einsum("kbhnd,bhmd->kbhnm", q.to(acc_dtype), k.to(acc_dtype)) * scale
    probs = torch.softmax(scores, dim=-1)
    result = torch.einsum("kbhnm,bhmd->kbhnd", probs, v.to(acc_dtype))
    out = attention_output_layout(q)
    out.copy_(result)
    return out


def shared_kv_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """The plain PyTorch backend: one scaled_dot_product_attention call for all K groups.

    Softmax is per query row and every row of every group sees the same keys, so any way of
    putting the K groups into one SDPA call is exactly equivalent. Which one is cheapest:
    - Folding K into the query axis ((K, B, H, N, D) -> (B, H, K*N, D)) is a view only when K's
      stride equals N times N's stride, i.e. K == 1 or B == 1 for a timestep-major q. Then it
      costs nothing, and it is what we do.
    - Otherwise folding copies q (K*N*D values per (b, h)) and the result back to timestep-major
      order, while expanding k and v to the K*B batch copies 2*K*M*D values per (b, h) and keeps
      a timestep-major q and the output as views. With M = 77 text tokens that is 2M/N of the q copy (4% at
      N = 4096), so we expand K/V whenever 2*M < N and fold (copying q) otherwise.
    """
    k_groups, batch, heads, tokens, head_dim = q.shape
    keys = k.shape[2]
    out = attention_output_layout(q)

    folded = _fold_groups_into_queries(q)
    if folded is not None:
        result = F.scaled_dot_product_attention(folded, k, v, scale=scale)
        result = result.unflatten(2, (k_groups, tokens)).permute(2, 0, 1, 3, 4)
    elif 2 * keys < tokens:
        expanded = (k_groups * batch, heads, keys, head_dim)
        k_rep = k.unsqueeze(0).expand(k_groups, *k.shape).reshape(expanded)
        v_rep = v.unsqueeze(0).expand(k_groups, *v.shape).reshape(expanded)
        result = F.scaled_dot_product_attention(q.flatten(0, 1), k_rep, v_rep, scale=scale)
        result = result.unflatten(0, (k_groups, batch))
    else:
        folded = q.permute(1, 2, 0, 3, 4).reshape(batch, heads, k_groups * tokens, head_dim)
        result = F.scaled_dot_product_attention(folded, k, v, scale=scale)
        result = result.unflatten(2, (k_groups, tokens)).permute(2, 0, 1, 3, 4)

    if _same_significant_strides(result, out):
        # SDPA already wrote our layout (it follows q's): hand it out without a copy.
        return result.as_strided(out.shape, out.stride())
    out.copy_(result)
    return out


def shared_kv_attention_backward_sdpa(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain PyTorch backward: SDPA's own fused backward kernel on the folded layout.

    The K groups fold into the query axis ((K, B, H, N, D) -> (B, H, K*N, D)); dk and dv of the
    folded call are then already summed over the groups. The forward is recomputed to get the
    row log-sum-exp the fused backward needs (as flash attention's backward recomputes its
    blocks), so no (K, B, H, N, M) probability tensor is ever held: memory grows as SDPA's.
    CPU: the flash-attention-for-CPU kernels; other devices: the einsum backward.
    """
    k_groups, batch, heads, tokens, head_dim = q.shape

    def fold(x: torch.Tensor) -> torch.Tensor:
        return x.permute(1, 2, 0, 3, 4).reshape(batch, heads, k_groups * tokens, head_dim).contiguous()

    q_f, grad_f = fold(q), fold(grad_out).to(q.dtype)
    k_c, v_c = k.contiguous(), v.contiguous()
    aten = torch.ops.aten
    if q.device.type == "cpu":
        out_f, lse = aten._scaled_dot_product_flash_attention_for_cpu(q_f, k_c, v_c, scale=scale)
        grad_q, grad_k, grad_v = aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_f, q_f, k_c, v_c, out_f, lse, 0.0, False, scale=scale
        )
    else:
        # CUDA: the einsum backward. Measured on an H200 (SD2.1's 64x64 level, fp32) it takes
        # 1.7 ms against 4.6 ms for SDPA's fused backward, for 137 MiB against 121 MiB; and this
        # runs inside a custom op, below autograd, where SDPA's backward cannot be reached
        # through autograd.grad.
        return shared_kv_attention_backward_reference(grad_out, q, k, v, out, scale)
    grad_q = grad_q.reshape(batch, heads, k_groups, tokens, head_dim).permute(2, 0, 1, 3, 4)
    return grad_q.contiguous(), grad_k.contiguous(), grad_v.contiguous()


def _fold_groups_into_queries(q: torch.Tensor) -> torch.Tensor | None:
    """(K, B, H, N, D) -> (B, H, K*N, D) as a view, or None when that needs a copy."""
    k_groups, batch, heads, tokens, head_dim = q.shape
    permuted = q.permute(1, 2, 0, 3, 4)
    if k_groups == 1 or q.stride(0) == tokens * q.stride(3):
        return permuted.reshape(batch, heads, k_groups * tokens, head_dim)
    return None


def _same_significant_strides(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal layouts up to the strides of size-1 dims, which address nothing."""
    if a.shape != b.shape:
        return False
    return all(size == 1 or sa == sb for size, sa, sb in zip(a.shape, a.stride(), b.stride()))


def shared_kv_attention_backward_reference(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv) of shared_kv_attention, summed over the K groups for k and v.

    With P = softmax(S), S = q k^T * scale: dv = sum_k P^T dO, dP = dO v^T,
    dS = P * (dP - rowsum(dO * O)), dq = dS k * scale, dk = sum_k dS^T q * scale.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    acc = accumulation_dtype(q.dtype)
    q_, k_, v_ = q.to(acc), k.to(acc), v.to(acc)
    grad_, out_ = grad_out.to(acc), out.to(acc)
    probs = torch.softmax(torch.einsum("kbhnd,bhmd->kbhnm", q_, k_) * scale, dim=-1)
    grad_v = torch.einsum("kbhnm,kbhnd->bhmd", probs, grad_)
    grad_probs = torch.einsum("kbhnd,bhmd->kbhnm", grad_, v_)
    row_dot = (grad_ * out_).sum(dim=-1, keepdim=True)
    grad_scores = probs * (grad_probs - row_dot) * scale
    grad_q = torch.einsum("kbhnm,bhmd->kbhnd", grad_scores, k_)
    grad_k = torch.einsum("kbhnm,kbhnd->bhmd", grad_scores, q_)
    return (
        grad_q.to(q.dtype).contiguous(),
        grad_k.to(k.dtype).contiguous(),
        grad_v.to(v.dtype).contiguous(),
    )
