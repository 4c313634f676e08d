"""The whole loop-free sample after the text encoder, as one module: what gets compiled and
captured. Eager sampling runs the same module uncompiled."""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL
from torch import nn

from tiue import ops
from tiue.unet import TiUEUNet

__all__ = ["OnePass"]


class OnePass(nn.Module):
    """noise z_K and text -> image in [-1, 1] (decode=True) or the latent z_0 (decode=False).

    Encoder once at timesteps[0], all K decoders as one batch, the fused loop-free combination
    (which also applies the VAE's 1/scaling_factor and casts to its dtype), the VAE decoder.
    """

    def __init__(self, tiue_unet: TiUEUNet, vae: AutoencoderKL):
        super().__init__()
        self.tiue_unet = tiue_unet
        self.vae = vae

    def forward(
        self,
        latents: torch.Tensor,
        text: torch.Tensor,
        timesteps: torch.Tensor,
        timestep_embeddings: torch.Tensor,
        coeffs: tuple[float, ...],
        decode: bool,
    ) -> torch.Tensor:
        features = self.tiue_unet.encode(latents, timesteps[0], text)
        eps = self.tiue_unet.decode(features, timesteps, text, timestep_embeddings)
        if not decode:
            return ops.ddim_combine(latents, eps, coeffs, scale=1.0, out_dtype=latents.dtype)
        scale = 1.0 / self.vae.config.scaling_factor
        z = ops.ddim_combine(latents, eps, coeffs, scale=scale, out_dtype=self.vae.dtype)
        return self.vae.decode(z, return_dict=False)[0]
