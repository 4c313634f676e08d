"""Latent-space geometry shared by the sampler and the trainer."""

from __future__ import annotations

__all__ = ["vae_scale_factor"]


def vae_scale_factor(vae) -> int:
    """How many pixels one latent covers per side: 2 per downsampling block of the VAE (8 for SD)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)
