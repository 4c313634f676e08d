"""Cross-attention that projects the text once per prompt batch, for the TiUE decoder.

During the loop-free decode the image side has K*B rows in timestep-major order (row k*B + b is
timestep k, prompt b) while the text has B rows: every timestep attends the same prompt. The
stock processors need the text repeated K times and project it K times. This processor projects
keys and values once, on the B text rows, and hands all K query groups to
`tiue.ops.shared_kv_attention`, which never repeats them in memory.

With equal batches it computes exactly what diffusers' `AttnProcessor2_0` computes, so a normal
UNet forward keeps working with it installed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from tiue.ops import shared_kv_attention

__all__ = ["TiUECrossAttnProcessor", "install_shared_text_attention"]


class TiUECrossAttnProcessor:
    """A diffusers attention processor for hidden batch K*B and text batch B.

    Handles what Stable Diffusion 1.x / 2.x attention layers use: optional spatial and group
    norm, norm_cross, norm_q / norm_k, residual_connection and rescale_output_factor. An
    attention mask is only accepted when the batches are equal (K = 1).
    """

    def __call__(
        self,
        attn: nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        image_shape = None
        if hidden_states.ndim == 4:
            image_shape = hidden_states.shape
            rows, channels, height, width = image_shape
            hidden_states = hidden_states.view(rows, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if encoder_hidden_states is None:
            context = hidden_states
        elif attn.norm_cross is not None:
            context = attn.norm_encoder_hidden_states(encoder_hidden_states)
        else:
            context = encoder_hidden_states
        steps = _timesteps_per_prompt(hidden_states.shape[0], context.shape[0])
        if steps > 1 and attention_mask is not None:
            raise ValueError(
                "attention_mask: not supported when the text is shared by K > 1 timesteps "
                f"(hidden batch {hidden_states.shape[0]}, text batch {context.shape[0]}); pass "
                "attention_mask=None or repeat the text to the hidden batch"
            )

        query = attn.to_q(hidden_states)
        if getattr(attn, "fused_projections", False) and hasattr(attn, "to_kv"):
            # Fused by the fast path: one matmul for both text projections.
            key, value = attn.to_kv(context).chunk(2, dim=-1)
        else:
            key = attn.to_k(context)
            value = attn.to_v(context)
        if steps == 1:
            out = _batched_attention(attn, query, key, value, attention_mask)
        else:
            out = _shared_text_attention(attn, query, key, value, steps)
        out = out.to(query.dtype)

        out = attn.to_out[0](out)  # projection
        out = attn.to_out[1](out)  # dropout
        if image_shape is not None:
            out = out.transpose(-1, -2).reshape(image_shape)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def _timesteps_per_prompt(hidden_rows: int, text_rows: int) -> int:
    if text_rows == 0 or hidden_rows % text_rows != 0:
        raise ValueError(
            f"encoder_hidden_states: its batch ({text_rows}) must divide the hidden_states batch "
            f"({hidden_rows}), which is K timesteps x B prompts in timestep-major order"
        )
    return hidden_rows // text_rows


def _split_heads(attn: nn.Module, x: torch.Tensor, head_dim: int) -> torch.Tensor:
    """(R, L, H*D) -> (R, H, L, D), a view."""
    return x.view(x.shape[0], -1, attn.heads, head_dim).transpose(1, 2)


def _heads(attn, q: torch.Tensor, key: torch.Tensor, value: torch.Tensor, head_dim: int):
    """Keys and values split into heads; the layer's optional q/k norms applied."""
    k = _split_heads(attn, key, head_dim)
    v = _split_heads(attn, value, head_dim)
    if attn.norm_q is not None:
        q = attn.norm_q(q)
    if attn.norm_k is not None:
        k = attn.norm_k(k)
    return q, k, v


def _batched_attention(attn, query, key, value, attention_mask) -> torch.Tensor:
    """Equal batches: one SDPA call, as diffusers' AttnProcessor2_0 does. Returns (R, N, H*D)."""
    rows = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    if attention_mask is not None:
        attention_mask = attn.prepare_attention_mask(attention_mask, key.shape[1], rows)
        attention_mask = attention_mask.view(rows, attn.heads, -1, attention_mask.shape[-1])
    q, k, v = _heads(attn, _split_heads(attn, query, head_dim), key, value, head_dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask, dropout_p=0.0)
    return out.transpose(1, 2).reshape(rows, -1, attn.heads * head_dim)


def _shared_text_attention(attn, query, key, value, steps: int) -> torch.Tensor:
    """Query rows K*B (timestep-major), key/value rows B. Returns (K*B, N, H*D)."""
    rows, tokens, _ = query.shape
    prompts = key.shape[0]
    head_dim = key.shape[-1] // attn.heads
    # (K*B, N, H*D) -> (K, B, H, N, D): a view, since rows are timestep-major.
    q = query.view(steps, prompts, tokens, attn.heads, head_dim).permute(0, 1, 3, 2, 4)
    q, k, v = _heads(attn, q, key, value, head_dim)
    out = shared_kv_attention(q, k, v)  # laid out (K, B, N, H, D): the merge below is a view
    return out.permute(0, 1, 3, 2, 4).reshape(rows, tokens, attn.heads * head_dim)


def install_shared_text_attention(module: nn.Module) -> int:
    """Install `TiUECrossAttnProcessor` on every cross-attention layer under `module`.

    Returns how many layers it was installed on. Self-attention layers keep their processor.
    """
    from diffusers.models.attention_processor import Attention

    processor = TiUECrossAttnProcessor()  # stateless: one instance serves every layer
    installed = 0
    for layer in module.modules():
        if isinstance(layer, Attention) and layer.is_cross_attention:
            layer.set_processor(processor)
            installed += 1
    return installed
