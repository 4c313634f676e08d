"""Triton kernel for `tiue.ops.ddim_combine`: one read of every input, one write.

out = scale * (coeffs[0] * noise + sum_k coeffs[k+1] * eps[k]), accumulated in fp32 (fp64
for fp64 inputs). The K+1 coefficients travel as kernel arguments (a tuple of floats), never
through device memory, so nothing waits on the GPU and CUDA graphs capture them as constants.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["MAX_STEPS", "ddim_combine", "memory_layout"]

BLOCK = 1024
MAX_STEPS = 64  # each K compiles its own kernel (the coefficients are a K+1 tuple argument)
INT32_LIMIT = 2**31 - 1

# How the kernel walks the inputs (a constexpr: each compiles its own kernel).
CONTIGUOUS = 0  # noise and every eps[k] contiguous: flat offsets, no index math
CHANNELS_LAST = 1  # noise and every eps[k] dense channels-last (the fast path's latents)
STRIDED = 2  # anything else: full (b, c, h, w) index math in int64


@triton.jit
def ddim_combine_kernel(
    out_ptr,  # (B, C, H, W) contiguous, the output dtype
    noise_ptr,  # (B, C, H, W), strides noise_s*
    eps_ptr,  # (K, B, C, H, W), strides eps_s*
    coeffs,  # tuple of K+1 floats
    scale,  # float
    numel,  # B*C*H*W
    C,
    H,
    W,
    noise_sb,
    noise_sc,
    noise_sh,
    noise_sw,
    eps_sk,
    eps_sb,
    eps_sc,
    eps_sh,
    eps_sw,
    K: tl.constexpr,
    LAYOUT: tl.constexpr,  # CONTIGUOUS, CHANNELS_LAST or STRIDED
    ACC_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    out_offs = offs
    if LAYOUT == 0:
        noise_offs = offs
        eps_offs = offs
    elif LAYOUT == 1:
        # Walk the inputs in their own memory order (flat, coalesced reads) and scatter into the
        # contiguous output: two div/mods in int32 (the launcher checks the sizes fit).
        flat = offs.to(tl.int32)
        c = flat % C
        pixel = flat // C  # b * H * W + h * W + w
        hw = pixel % (H * W)
        b = pixel // (H * W)
        noise_offs = flat
        eps_offs = flat
        out_offs = (b * C + c) * (H * W) + hw
    else:
        w = offs % W
        rest = offs // W
        h = rest % H
        rest = rest // H
        c = rest % C
        b = rest // C
        noise_offs = b * noise_sb + c * noise_sc + h * noise_sh + w * noise_sw
        eps_offs = b * eps_sb + c * eps_sc + h * eps_sh + w * eps_sw
    acc = tl.load(noise_ptr + noise_offs, mask=mask, other=0).to(ACC_DTYPE) * coeffs[0]
    for k in tl.static_range(K):
        e = tl.load(eps_ptr + k * eps_sk + eps_offs, mask=mask, other=0).to(ACC_DTYPE)
        acc += e * coeffs[k + 1]
    tl.store(out_ptr + out_offs, (acc * scale).to(out_ptr.dtype.element_ty), mask=mask)


def memory_layout(noise: torch.Tensor, eps: torch.Tensor) -> int:
    """CONTIGUOUS, CHANNELS_LAST or STRIDED for 4-D noise and 5-D eps."""
    steps = [eps[k] for k in range(eps.shape[0])]
    if noise.is_contiguous() and all(e.is_contiguous() for e in steps):
        return CONTIGUOUS
    channels_last = torch.channels_last
    if (
        noise.numel() <= INT32_LIMIT
        and noise.is_contiguous(memory_format=channels_last)
        and all(e.is_contiguous(memory_format=channels_last) and e.stride() == noise.stride() for e in steps)
    ):
        return CHANNELS_LAST
    return STRIDED


def ddim_combine(
    noise: torch.Tensor,
    eps: torch.Tensor,
    coeffs: list[float],
    scale: float,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Launch on 4-D noise (B, C, H, W) and 5-D eps (K, B, C, H, W); returns contiguous output."""
    num_steps = eps.shape[0]
    out = torch.empty(noise.shape, dtype=out_dtype, device=noise.device)
    numel = out.numel()
    if numel == 0:
        return out
    acc_dtype = tl.float64 if torch.float64 in (noise.dtype, eps.dtype) else tl.float32
    _, channels, height, width = noise.shape
    ddim_combine_kernel[(triton.cdiv(numel, BLOCK),)](
        out,
        noise,
        eps,
        tuple(float(c) for c in coeffs),
        float(scale),
        numel,
        channels,
        height,
        width,
        *noise.stride(),
        *eps.stride(),
        K=num_steps,
        LAYOUT=memory_layout(noise, eps),
        ACC_DTYPE=acc_dtype,
        BLOCK=BLOCK,
        num_warps=4,
    )
    return out
