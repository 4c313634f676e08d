"""Triton kernel for `tiue.ops.shared_kv_attention`, specialised for short key sequences.

All M <= 128 keys and values of one (batch, head) fit on chip, so each program loads them once,
takes a BLOCK_N tile of queries from one of the K groups, and does the whole softmax in
registers: no running max, no rescaling, one pass. The K groups index the same key/value rows:
nothing is repeated in memory, and the K programs that share a (batch, head) are launched back
to back so they find those rows in L2.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

__all__ = [
    "MAX_GROUP_PROGRAMS",
    "MAX_HEAD_DIM",
    "MAX_KEYS",
    "LaunchConfig",
    "launch_config",
    "shared_kv_attention",
]

MAX_KEYS = 128
MAX_HEAD_DIM = 256
MAX_GROUP_PROGRAMS = 65535  # CUDA's limit on the grid's second axis (K * B * H programs)
LOG2E = 1.4426950408889634
# head dim -> the compiled kernel of the latest launch (its n_regs and n_spills tell whether the
# tiles spill registers on this GPU and Triton; benchmarks/gpu_check.py reports them).
LAST_COMPILED: dict[int, object] = {}


@dataclass(frozen=True)
class LaunchConfig:
    block_n: int  # query rows per program
    block_m: int  # keys, padded
    block_d: int  # head dim, padded
    num_warps: int

    def shared_memory_bytes(self, element_size: int) -> int:
        """What the q tile and the whole k and v rows stage in shared memory (the dots read their
        operands from there), in bytes: element_size * D * (N + 2 M)."""
        return element_size * self.block_d * (self.block_n + 2 * self.block_m)


def launch_config(keys: int, head_dim: int) -> LaunchConfig:
    """The tile sizes the launcher uses for M keys of head dim D.

    Eight warps: compiled for sm_90 at 77 keys in fp16, four warps need 232 registers a thread
    at D = 64 and spill at D = 160 (255 registers and a 448-byte stack); eight need 141 and 202,
    with no spill (docs/kernels.md). fp32 on a GPU goes to SDPA (its tiles spill either way).
    """
    block_d = max(16, triton.next_power_of_2(head_dim))
    block_n = 64 if block_d <= 64 else (32 if block_d <= 128 else 16)
    return LaunchConfig(block_n, max(16, triton.next_power_of_2(keys)), block_d, num_warps=8)


@triton.jit
def shared_kv_attention_kernel(
    out_ptr,  # (K, B, H, N, D), strides o_s*
    q_ptr,  # (K, B, H, N, D), strides q_s*
    k_ptr,  # (B, H, M, D), strides k_s*
    v_ptr,  # (B, H, M, D), strides v_s*
    qk_scale,  # softmax scale * log2(e): the kernel uses exp2
    K,
    H,
    N,
    M,
    D,
    q_sk, q_sb, q_sh, q_sn, q_sd,
    k_sb, k_sh, k_sm, k_sd,
    v_sb, v_sh, v_sm, v_sd,
    o_sk, o_sb, o_sh, o_sn, o_sd,
    BLOCK_N: tl.constexpr,
    BLOCK_M: tl.constexpr,  # >= M
    BLOCK_D: tl.constexpr,  # >= D
    IEEE_FP32: tl.constexpr,  # fp32 inputs: exact fp32 products, as torch does by default
    UPCAST: tl.constexpr,  # compute the products in fp32 (the interpreter's bf16 dot is wrong)
):
    block = tl.program_id(0)
    group = tl.program_id(1)
    step = (group % K).to(tl.int64)
    head = ((group // K) % H).to(tl.int64)
    batch = (group // (K * H)).to(tl.int64)

    rows = block * BLOCK_N + tl.arange(0, BLOCK_N)
    keys = tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < N
    key_ok = keys < M
    dim_ok = dims < D

    q_base = q_ptr + step * q_sk + batch * q_sb + head * q_sh
    q = tl.load(
        q_base + rows[:, None] * q_sn + dims[None, :] * q_sd,
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0,
    )
    k_base = k_ptr + batch * k_sb + head * k_sh
    k_t = tl.load(  # (BLOCK_D, BLOCK_M): keys as columns
        k_base + keys[None, :] * k_sm + dims[:, None] * k_sd,
        mask=key_ok[None, :] & dim_ok[:, None],
        other=0,
    )
    v_base = v_ptr + batch * v_sb + head * v_sh
    v = tl.load(
        v_base + keys[:, None] * v_sm + dims[None, :] * v_sd,
        mask=key_ok[:, None] & dim_ok[None, :],
        other=0,
    )
    if UPCAST:
        q = q.to(tl.float32)
        k_t = k_t.to(tl.float32)
        v = v.to(tl.float32)

    if IEEE_FP32:
        scores = tl.dot(q, k_t, input_precision="ieee")
    else:
        scores = tl.dot(q, k_t)
    scores = tl.where(key_ok[None, :], scores * qk_scale, float("-inf"))
    row_max = tl.max(scores, axis=1)
    probs = tl.exp2(scores - row_max[:, None])
    row_sum = tl.sum(probs, axis=1)
    if IEEE_FP32:
        out = tl.dot(probs.to(v.dtype), v, input_precision="ieee")
    else:
        out = tl.dot(probs.to(v.dtype), v)
    out = out / row_sum[:, None]

    o_base = out_ptr + step * o_sk + batch * o_sb + head * o_sh
    tl.store(
        o_base + rows[:, None] * o_sn + dims[None, :] * o_sd,
        out.to(out_ptr.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )


def shared_kv_attention(
    out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float
) -> torch.Tensor:
    """Write softmax(q k^T * scale) v into `out` (any strides); q (K,B,H,N,D), k/v (B,H,M,D)."""
    k_groups, batch, heads, tokens, head_dim = q.shape
    keys = k.shape[2]
    if keys > MAX_KEYS or head_dim > MAX_HEAD_DIM or k_groups * batch * heads > MAX_GROUP_PROGRAMS:
        raise ValueError(
            f"shared_kv_attention (Triton): takes M <= {MAX_KEYS} keys, D <= {MAX_HEAD_DIM} and "
            f"K*B*H <= {MAX_GROUP_PROGRAMS}, got M={keys}, D={head_dim}, K*B*H={k_groups * batch * heads}"
        )
    if out.numel() == 0:
        return out
    config = launch_config(keys, head_dim)
    # Read from the environment, as Triton itself does: `triton.knobs` only exists from Triton 3.4.
    interpreted = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")
    LAST_COMPILED[head_dim] = shared_kv_attention_kernel[(triton.cdiv(tokens, config.block_n), k_groups * batch * heads)](
        out, q, k, v, scale * LOG2E,
        k_groups, heads, tokens, keys, head_dim,
        *q.stride(), *k.stride(), *v.stride(), *out.stride(),
        BLOCK_N=config.block_n,
        BLOCK_M=config.block_m,
        BLOCK_D=config.block_d,
        IEEE_FP32=q.dtype == torch.float32,
        UPCAST=interpreted and q.dtype == torch.bfloat16,
        num_warps=config.num_warps,
    )
    return out
