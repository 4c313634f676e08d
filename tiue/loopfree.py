"""The loop-free pass: the whole sample after the text encoder, as one module.

This is the algorithm itself: the eager pipeline runs it as it is, and the fast path
(tiue.fast) compiles it and captures it in CUDA graphs, given only the TiUE UNet and the VAE."""

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

    With a guidance scale, `text` holds 2B rows, the unconditional ones first: the encoder and
    decoders run on both halves at once and each decoder's output is guided before the
    combination. The combination is linear, so this is exact classifier-free guidance of the pass.
    The fast path passes the scale as a 0-d float32 tensor (a graph input, so a new scale needs no
    recompile); the guidance is then computed in float32, so that the scale is never rounded to a
    half-precision dtype.
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
        guidance_scale: float | torch.Tensor | None = None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        sample = latents if guidance_scale is None else torch.cat([latents, latents])
        features = self.tiue_unet.encode(sample, timesteps[0], text, added_cond_kwargs)
        eps = self.tiue_unet.decode(features, timesteps, text, timestep_embeddings)
        if guidance_scale is not None:
            unconditional, conditional = eps.chunk(2, dim=1)  # (K, 2B, ...) -> two (K, B, ...)
            eps = _guide(unconditional, conditional, guidance_scale)
        if not decode:
            return ops.ddim_combine(latents, eps, coeffs, scale=1.0, out_dtype=latents.dtype)
        scale = 1.0 / self.vae.config.scaling_factor
        z = ops.ddim_combine(latents, eps, coeffs, scale=scale, out_dtype=self.vae.dtype)
        return self.vae.decode(z, return_dict=False)[0]


def _guide(unconditional: torch.Tensor, conditional: torch.Tensor, scale: float | torch.Tensor) -> torch.Tensor:
    """unconditional + scale * (conditional - unconditional), in float32 when scale is a tensor."""
    if isinstance(scale, torch.Tensor):
        u, c = unconditional.float(), conditional.float()
        return (u + scale * (c - u)).to(unconditional.dtype)
    return unconditional + scale * (conditional - unconditional)
