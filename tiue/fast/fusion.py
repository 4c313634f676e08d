"""Fused QKV projections that keep tiue's shared-text processors and can be undone cleanly.

diffusers' own `fuse_qkv_projections` replaces every processor (ours included) and its
`unfuse_qkv_projections` leaves the fused layers registered, so they would be saved with
the weights. These helpers fuse, refresh after in-place weight loads, and unfuse fully.
"""

from __future__ import annotations

import torch
from diffusers.models.attention_processor import Attention, FusedAttnProcessor2_0
from torch import nn

__all__ = ["fuse_projections", "refresh_fused_projections", "unfuse_projections"]

_FUSED_LAYERS = ("to_qkv", "to_kv")


def _attention_modules(model: nn.Module) -> list[Attention]:
    return [m for m in model.modules() if isinstance(m, Attention)]


def fuse_projections(model: nn.Module, keep: tuple[type, ...] = ()) -> dict[Attention, object]:
    """Fuse q/k/v (self-attention) and k/v (cross-attention) of every attention layer.

    Layers whose processor is an instance of `keep` keep it (it must read the fused layers);
    the others get diffusers' FusedAttnProcessor2_0. Returns the previous processors.
    """
    previous = {}
    for attn in _attention_modules(model):
        if getattr(attn, "fused_projections", False):
            continue
        previous[attn] = attn.processor
        with torch.no_grad():
            attn.fuse_projections(fuse=True)
        if not isinstance(attn.processor, keep):
            attn.set_processor(FusedAttnProcessor2_0())
    return previous


@torch.no_grad()
def refresh_fused_projections(model: nn.Module) -> None:
    """Copy the q/k/v weights into the fused layers, in place (graphs keep their pointers)."""
    for attn in _attention_modules(model):
        if not getattr(attn, "fused_projections", False):
            continue
        parts = [attn.to_q, attn.to_k, attn.to_v] if hasattr(attn, "to_qkv") else [attn.to_k, attn.to_v]
        fused = attn.to_qkv if hasattr(attn, "to_qkv") else attn.to_kv
        fused.weight.copy_(torch.cat([p.weight for p in parts]))
        if fused.bias is not None:
            fused.bias.copy_(torch.cat([p.bias for p in parts]))


def unfuse_projections(model: nn.Module, previous: dict[Attention, object]) -> None:
    """Remove the fused layers and restore the processors `fuse_projections` replaced."""
    for attn in _attention_modules(model):
        for name in _FUSED_LAYERS:
            if hasattr(attn, name):
                delattr(attn, name)
        attn.fused_projections = False
        if attn in previous:
            attn.set_processor(previous[attn])


def fused_parameter_names(model: nn.Module) -> set[str]:
    """Names of the fused layers' parameters, which are derived from q/k/v, not stored."""
    return {
        name
        for name, _ in model.named_parameters()
        if any(f".{layer}." in f".{name}" for layer in _FUSED_LAYERS)
    }
