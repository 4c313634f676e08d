"""`shared_kv_attention`: K query groups attending one shared key/value batch, and its backends.

Here: the public function; the `torch.ops.tiue.shared_kv_attention` custom op (schema, fake,
autograd) and its backward op `shared_kv_attention_backward`; the argument checks; the plain
PyTorch forward (SDPA) and backward (SDPA's fused backward on CPU, einsum elsewhere); and the
backend table (Triton through tiue.kernels.shared_kv_attention, with the rule that keeps calls
the kernel cannot take or cannot run well on SDPA). tiue._C has no attention kernel.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from tiue.ops.checks import accumulation_dtype, check_float, check_same_device
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
    "DISPATCHER",
    "BACKWARD_CHUNK_BYTES",
    "SM90_SHARED_MEMORY_BYTES",
    "attention_output_layout",
    "attention_rejection",
    "backward_chunk_rows",
    "backward_implementation",
    "backward_memory_bytes",
    "shared_kv_attention",
    "shared_kv_attention_backward_chunked",
    "shared_kv_attention_backward_einsum",
    "shared_kv_attention_backward_flash_cpu",
    "shared_kv_attention_backward_op",
    "shared_kv_attention_backward_sdpa",
    "shared_kv_attention_composite",
    "shared_kv_attention_op",
    "shared_kv_attention_sdpa",
    "shared_memory_limit",
]

ATTENTION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
# Opt-in shared memory per block of sm_90 (H100/H200), the largest of the GPUs tiue targets; the
# limit for CPU tensors (the interpreter has none) so that they follow the same rule.
SM90_SHARED_MEMORY_BYTES = 232_448


def shared_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """softmax(q k^T * scale) v where all K query groups attend one key/value batch.

    q: (K, B, H, N, D); k, v: (B, H, M, D), never repeated in memory; scale defaults to
    1/sqrt(D). Returns (K, B, H, N, D) in q's dtype, laid out as (K, B, N, H, D) in memory so
    that merging heads back to (K*B, N, H*D) is a view. Differentiable.
    """
    if plain_torch_ops_active():
        return shared_kv_attention_folded(q, k, v, scale)
    if torch.compiler.is_compiling():
        return shared_kv_attention_composite(q, k, v, scale)
    if not all(isinstance(t, Tensor) for t in (q, k, v)) or (
        torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    ):
        return torch.ops.tiue.shared_kv_attention(q, k, v, scale)
    # No autograd needed: the checks and the backend's function, without the custom-op layer.
    check_shared_kv_attention(q, k, v, scale)
    kernel = DISPATCHER.eager_choice(q.device.type)
    if kernel is not None and kernel.backend == "torch":
        note_choice("shared_kv_attention", q.device.type, "torch")
        return shared_kv_attention_sdpa(q, k, v, scale)
    return DISPATCHER(q, k, v, scale)


def shared_kv_attention_composite(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """What a compiled graph gets: SDPA on the K groups in standard ops (shared_kv_attention_sdpa),
    so that inductor sees the attention and picks its own SDPA kernel; an opaque custom op would
    hide it. On an H200 SDPA ran 1.4-2.6x faster than the Triton kernel at SD2.1's sizes."""
    check_shared_kv_attention(q, k, v, scale)
    return shared_kv_attention_sdpa(q, k, v, scale)


def shared_kv_attention_folded(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
) -> torch.Tensor:
    """The op in the fewest standard ops, for converters (see plain_torch_ops): the K query
    groups folded into the query axis of one scaled_dot_product_attention call. Exact: every
    query row sees the same keys. (Copies q for B > 1; the kernels and the SDPA backend avoid that.)"""
    k_groups, batch, heads, tokens, head_dim = q.shape
    folded = q.permute(1, 2, 0, 3, 4).reshape(batch, heads, k_groups * tokens, head_dim)
    out = F.scaled_dot_product_attention(folded, k, v, scale=scale)
    return out.reshape(batch, heads, k_groups, tokens, head_dim).permute(2, 0, 1, 3, 4)


def attention_output_layout(q: torch.Tensor) -> torch.Tensor:
    """An empty (K, B, H, N, D) output laid out as (K, B, N, H, D) in memory.

    That is the layout an attention processor needs next: merging the heads back into
    (K*B, N, H*D) is then a view. Every backend and the fake return exactly this layout.
    """
    k_groups, batch, heads, tokens, head_dim = q.shape
    buffer = q.new_empty((k_groups, batch, tokens, heads, head_dim))
    return buffer.permute(0, 1, 3, 2, 4)


def check_shared_kv_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None
) -> None:
    op = "shared_kv_attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_float(op, name, t)
    if q.dim() != 5:
        raise ValueError(f"{op}: q must have shape (K, B, H, N, D), got {tuple(q.shape)}")
    if k.dim() != 4:
        raise ValueError(f"{op}: k must have shape (B, H, M, D), got {tuple(k.shape)}")
    batch, heads, head_dim = q.shape[1], q.shape[2], q.shape[4]
    if k.shape[0] != batch or k.shape[1] != heads or k.shape[3] != head_dim:
        raise ValueError(
            f"{op}: k must have shape (B, H, M, D) = ({batch}, {heads}, M, {head_dim}) to match "
            f"q {tuple(q.shape)}, got {tuple(k.shape)}"
        )
    if k.shape[2] < 1:
        raise ValueError(f"{op}: k must hold at least one key (M >= 1), got {tuple(k.shape)}")
    if v.shape != k.shape:
        raise ValueError(f"{op}: v must have the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(
            f"{op}: q, k and v must share one dtype, got {q.dtype}, {k.dtype} and {v.dtype}"
        )
    if scale is not None and not scale > 0:
        raise ValueError(f"{op}: scale must be None or a positive float, got {scale!r}")
    check_same_device(op, {"q": q, "k": k, "v": v})


# -- plain PyTorch ------------------------------------------------------------------------------


def shared_kv_attention_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None, layout: str | None = None
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
    layout: "folded" or "expanded" takes that way whatever the rule says (the kernel benchmarks
    time both on a GPU, which decides the rule); None: the rule.
    """
    k_groups, batch, heads, tokens, head_dim = q.shape
    keys = k.shape[2]

    folded = _fold_groups_into_queries(q) if layout != "expanded" else None
    if folded is not None:
        result = F.scaled_dot_product_attention(folded, k, v, scale=scale)
        result = result.unflatten(2, (k_groups, tokens)).permute(2, 0, 1, 3, 4)
    elif layout == "expanded" or (layout is None and 2 * keys < tokens):
        expanded = (k_groups * batch, heads, keys, head_dim)
        k_rep = k.unsqueeze(0).expand(k_groups, *k.shape).reshape(expanded)
        v_rep = v.unsqueeze(0).expand(k_groups, *v.shape).reshape(expanded)
        result = F.scaled_dot_product_attention(q.flatten(0, 1), k_rep, v_rep, scale=scale)
        result = result.unflatten(0, (k_groups, batch))
    else:
        folded = q.permute(1, 2, 0, 3, 4).reshape(batch, heads, k_groups * tokens, head_dim)
        result = F.scaled_dot_product_attention(folded, k, v, scale=scale)
        result = result.unflatten(2, (k_groups, tokens)).permute(2, 0, 1, 3, 4)

    strides = _output_strides(q.shape)
    if _same_significant_strides(result, strides):
        # SDPA already wrote our layout (it follows q's): hand it out without a copy.
        return result.as_strided(q.shape, strides)
    out = attention_output_layout(q)
    out.copy_(result)
    return out


def _output_strides(shape) -> tuple[int, ...]:
    """The strides of attention_output_layout's (K, B, H, N, D) tensor, without allocating it."""
    _, batch, heads, tokens, head_dim = shape
    return (batch * tokens * heads * head_dim, tokens * heads * head_dim, head_dim, heads * head_dim, 1)


def _fold_groups_into_queries(q: torch.Tensor) -> torch.Tensor | None:
    """(K, B, H, N, D) -> (B, H, K*N, D) as a view, or None when that needs a copy."""
    k_groups, batch, heads, tokens, head_dim = q.shape
    if k_groups == 1 or q.stride(0) == tokens * q.stride(3):
        return q.permute(1, 2, 0, 3, 4).reshape(batch, heads, k_groups * tokens, head_dim)
    return None


def _same_significant_strides(a: torch.Tensor, strides: tuple[int, ...]) -> bool:
    """Whether `a` has these strides up to those of size-1 dims, which address nothing."""
    return all(size == 1 or sa == sb for size, sa, sb in zip(a.shape, a.stride(), strides))


def shared_kv_attention_backward_sdpa(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The plain PyTorch backward: backward_implementation(device) of the tensors' device."""
    return backward_implementation(q.device.type)(grad_out, q, k, v, out, scale)


def backward_implementation(device_type: str):
    """The function the op's backward runs on tensors of `device_type`: SDPA's fused CPU
    backward on a CPU, the chunked formula elsewhere (CUDA included). Benchmarks label their
    rows by it, so that two labels never time one code path."""
    if device_type == "cpu":
        return shared_kv_attention_backward_flash_cpu
    return shared_kv_attention_backward_chunked


def shared_kv_attention_backward_flash_cpu(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SDPA's own fused CPU backward (flash attention for CPU) on the folded layout.

    The K groups fold into the query axis ((K, B, H, N, D) -> (B, H, K*N, D)); dk and dv of the
    folded call are then already summed over the groups. The forward is recomputed to get the
    row log-sum-exp the fused backward needs (as flash attention's backward recomputes its
    blocks), so no (K, B, H, N, M) probability tensor is ever held: memory grows as SDPA's.
    """
    k_groups, batch, heads, tokens, head_dim = q.shape

    def fold(x: torch.Tensor) -> torch.Tensor:
        return x.permute(1, 2, 0, 3, 4).reshape(batch, heads, k_groups * tokens, head_dim).contiguous()

    q_f, grad_f = fold(q), fold(grad_out).to(q.dtype)
    k_c, v_c = k.contiguous(), v.contiguous()
    aten = torch.ops.aten
    out_f, lse = aten._scaled_dot_product_flash_attention_for_cpu(q_f, k_c, v_c, scale=scale)
    grad_q, grad_k, grad_v = aten._scaled_dot_product_flash_attention_for_cpu_backward(
        grad_f, q_f, k_c, v_c, out_f, lse, 0.0, False, scale=scale
    )
    grad_q = grad_q.reshape(batch, heads, k_groups, tokens, head_dim).permute(2, 0, 1, 3, 4)
    return grad_q.contiguous(), grad_k.contiguous(), grad_v.contiguous()


# Bytes of one fp32 (K, B, H, rows, M) block of the chunked backward: it takes as many query rows
# at a time as fit, so its workspace stays a few such blocks whatever N is.
BACKWARD_CHUNK_BYTES = 4 * 2**20


def backward_chunk_rows(k_groups: int, batch: int, heads: int, tokens: int, keys: int,
                        chunk_bytes: int = BACKWARD_CHUNK_BYTES) -> int:
    """Query rows per chunk of shared_kv_attention_backward_chunked (at least 1, at most N)."""
    per_row = k_groups * batch * heads * keys * 4
    return max(1, min(tokens, chunk_bytes // per_row))


def backward_memory_bytes(shape: tuple[int, ...], dtype: torch.dtype,
                          chunk_bytes: int = BACKWARD_CHUNK_BYTES) -> dict[str, int]:
    """What the chunked backward (the CUDA path) allocates, in bytes, from its own chunking rule.

    shape: (K, B, H, N, M, D). "workspace": the bound on the temporaries of one chunk (at most
    three fp32 (K, B, H, rows, M) blocks: scores or probabilities, their gradient, einsum's
    transposed copy; and five fp32 (K, B, H, rows, D) blocks: q, dO and O of the chunk, dq's
    product, einsum's copy) plus the fp32 k, v and dk, dv accumulators; "outputs": dq, dk, dv;
    "full_probabilities": one fp32 (K, B, H, N, M) tensor, what the unchunked formula holds four
    of (and what this path never builds).
    """
    k_groups, batch, heads, tokens, keys, head_dim = shape
    rows = backward_chunk_rows(k_groups, batch, heads, tokens, keys, chunk_bytes)
    element = torch.empty((), dtype=dtype).element_size()
    lead = k_groups * batch * heads
    workspace = 4 * (3 * lead * rows * keys + 5 * lead * rows * head_dim + 4 * batch * heads * keys * head_dim)
    outputs = element * (lead * tokens * head_dim + 2 * batch * heads * keys * head_dim)
    return dict(rows_per_chunk=rows, workspace=workspace, outputs=outputs,
                full_probabilities=4 * lead * tokens * keys)


def shared_kv_attention_backward_chunked(
    grad_out: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    scale: float | None = None,
    chunk_bytes: int = BACKWARD_CHUNK_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """shared_kv_attention_backward_einsum's formula over chunks of query rows.

    Every query row's softmax is its own, so rows can be done a chunk at a time: dq of a chunk is
    final, dk and dv add up over the chunks. Each chunk holds a few fp32 (K, B, H, rows, M)
    blocks of about `chunk_bytes`; no (K, B, H, N, M) tensor is ever built.
    """
    k_groups, batch, heads, tokens, head_dim = q.shape
    keys = k.shape[2]
    scale = head_dim**-0.5 if scale is None else scale
    acc = accumulation_dtype(q.dtype)
    k_, v_ = k.to(acc), v.to(acc)
    grad_q = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    grad_k = torch.zeros(k.shape, dtype=acc, device=k.device)
    grad_v = torch.zeros(v.shape, dtype=acc, device=v.device)
    rows = backward_chunk_rows(k_groups, batch, heads, tokens, keys, chunk_bytes)
    for start in range(0, tokens, rows):
        part = slice(start, start + rows)
        q_c, grad_c, out_c = (t[:, :, :, part].to(acc) for t in (q, grad_out, out))
        probs = torch.einsum("kbhnd,bhmd->kbhnm", q_c, k_).mul_(scale).softmax(dim=-1)
        grad_v += torch.einsum("kbhnm,kbhnd->bhmd", probs, grad_c)
        grad_scores = torch.einsum("kbhnd,bhmd->kbhnm", grad_c, v_)
        row_dot = (grad_c * out_c).sum(dim=-1, keepdim=True)
        del out_c
        grad_scores.sub_(row_dot).mul_(probs).mul_(scale)
        del probs
        grad_q[:, :, :, part] = torch.einsum("kbhnm,bhmd->kbhnd", grad_scores, k_)
        grad_k += torch.einsum("kbhnm,kbhnd->bhmd", grad_scores, q_c)
        del grad_scores, q_c, grad_c
    return grad_q, grad_k.to(k.dtype), grad_v.to(v.dtype)


def shared_kv_attention_backward_einsum(
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


# -- Triton -------------------------------------------------------------------------------------


def _triton(q, k, v, scale):
    module = kernel_module("shared_kv_attention")
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    with on_device_of(q):
        return module.shared_kv_attention(attention_output_layout(q), q, k, v, scale)


def _triton_rejects(q, k, v, scale) -> str | None:
    k_groups, batch, heads, _, head_dim = q.shape
    return attention_rejection(
        q.dtype, q.device.type, keys=k.shape[2], head_dim=head_dim, groups=k_groups * batch * heads,
        shared_memory_limit=shared_memory_limit(q.device),
    )


def attention_rejection(
    dtype: torch.dtype, device_type: str, *, keys: int, head_dim: int, groups: int, shared_memory_limit: int
) -> str | None:
    """Why the attention kernel should not run this call, or None: the Triton backend's reject
    rule, on plain values so that it can be checked without a GPU."""
    module = kernel_module("shared_kv_attention")
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


DISPATCHER = register_dispatcher(
    # On an H200 (fp16, SD2.1 decoder sizes) SDPA ran 1.4-2.6x faster than the Triton kernel:
    # CUDA tensors default to SDPA; TIUE_KERNELS=triton still selects the kernel.
    OpDispatcher("shared_kv_attention", shared_kv_attention_sdpa, auto_order={"cuda": ()})
)
DISPATCHER.add("triton", _triton, _triton_rejects)

BACKWARD_DISPATCHER = register_dispatcher(
    OpDispatcher("shared_kv_attention_backward", shared_kv_attention_backward_sdpa)
)


# -- the torch ops ------------------------------------------------------------------------------


@torch.library.custom_op("tiue::shared_kv_attention", mutates_args=())
def shared_kv_attention_op(
    q: Tensor, k: Tensor, v: Tensor, scale: Optional[float] = None
) -> Tensor:
    """softmax(q k^T * scale) v for q (K, B, H, N, D) and shared k, v (B, H, M, D)."""
    check_shared_kv_attention(q, k, v, scale)
    return shared_kv_attention_sdpa(q, k, v, scale)


def _attention_kernel(q, k, v, scale=None):
    check_shared_kv_attention(q, k, v, scale)
    return DISPATCHER(q, k, v, scale)


register_device_kernels(shared_kv_attention_op, _attention_kernel)


@shared_kv_attention_op.register_fake
def _(q, k, v, scale=None):
    check_shared_kv_attention(q, k, v, scale)
    return attention_output_layout(q)


@torch.library.custom_op("tiue::shared_kv_attention_backward", mutates_args=())
def shared_kv_attention_backward_op(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, scale: Optional[float] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv) of shared_kv_attention; dk and dv sum over the K query groups."""
    return shared_kv_attention_backward_sdpa(grad_out, q, k, v, out, scale)


register_device_kernels(shared_kv_attention_backward_op, BACKWARD_DISPATCHER)


@shared_kv_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, scale=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    ctx.scale = scale
    ctx.save_for_backward(q, k, v, output)


def _backward(ctx, grad_out):
    q, k, v, out = ctx.saved_tensors
    grads = torch.ops.tiue.shared_kv_attention_backward(grad_out, q, k, v, out, ctx.scale)
    return (*grads, None)


shared_kv_attention_op.register_autograd(_backward, setup_context=_setup_context)
