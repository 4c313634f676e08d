"""Row d: TiUE sampling the way the paper's public code runs it, re-created for timing.

The UNet encoder runs once, as in tiue; then every decoder input (each skip feature, the mid
block output, the conditioning: text embeddings and, for SDXL-class UNets, the pooled text
embedding and time ids) is copied K times with `.repeat` into one K*B batch, the decoder runs
on that batch, and the K outputs drive a per-step DDIM chain of `scheduler.step` calls in
Python. Eager, diffusers' default attention. Composed from the UNet's own blocks, so it
computes what tiue computes, by the slower route.
"""

from __future__ import annotations

import copy

import torch
from diffusers import DDIMScheduler
from diffusers.image_processor import VaeImageProcessor

from tiue.conditioning import Conditioning

from .models import Models

__all__ = ["PaperWaySampler"]


def _needs_text(block) -> bool:
    return getattr(block, "has_cross_attention", False)


class PaperWaySampler:
    def __init__(self, models: Models, image_size: int, num_steps: int = 4):
        self.models, self.image_size = models, image_size
        self.unet = models.unet
        self.vae = _decoding_vae(models)
        self.scheduler = DDIMScheduler.from_config(models.scheduler_config)
        self.num_steps = num_steps
        self.image_processor = VaeImageProcessor(vae_scale_factor=models.vae_scale_factor)

    def encode_text(self, prompts: list[str]) -> Conditioning:
        return self.models.encode_prompts(prompts, self.image_size)

    def _embedding(self, sample: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The UNet's emb(t) (+ the added embedding of SDXL-class UNets), as its forward makes it."""
        unet = self.unet
        emb = unet.time_embedding(unet.get_time_embed(sample, timesteps), None)
        aug = unet.get_aug_embed(emb=emb, encoder_hidden_states=cond.text, added_cond_kwargs=cond.added)
        if aug is not None:
            emb = emb + aug
        return emb if unet.time_embed_act is None else unet.time_embed_act(emb)

    @torch.no_grad()
    def sample_latents(self, noise: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """z_0 from the initial noise and the conditioning."""
        unet, steps, batch = self.unet, self.num_steps, noise.shape[0]
        self.scheduler.set_timesteps(steps, device=noise.device)
        timesteps = self.scheduler.timesteps
        text = cond.text

        # Encoder, once, at the first timestep.
        emb = self._embedding(noise, timesteps[0], cond)
        hidden = unet.conv_in(noise)
        skips = [hidden]
        for block in unet.down_blocks:
            extra = {"encoder_hidden_states": text} if _needs_text(block) else {}
            hidden, res = block(hidden_states=hidden, temb=emb, **extra)
            skips.extend(res)
        hidden = unet.mid_block(hidden, emb, encoder_hidden_states=text)

        # Decoder: every input copied K times, row k*B + b is timestep k, prompt b.
        hidden = hidden.repeat(steps, 1, 1, 1)
        skips = [s.repeat(steps, 1, 1, 1) for s in skips]
        cond_k = cond.repeat(steps)
        step_times = timesteps.repeat_interleave(batch)
        emb_k = self._embedding(hidden, step_times, cond_k)
        for block in unet.up_blocks:
            res, skips = tuple(skips[-len(block.resnets):]), skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if skips else None
            extra = {"encoder_hidden_states": cond_k.text} if _needs_text(block) else {}
            hidden = block(
                hidden_states=hidden, temb=emb_k, res_hidden_states_tuple=res,
                upsample_size=upsample_size, **extra,
            )
        eps = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))

        # The DDIM chain, one scheduler.step per decoder output.
        latents = noise
        for t, eps_t in zip(timesteps, eps.chunk(steps)):
            latents = self.scheduler.step(eps_t, t, latents, eta=0.0, return_dict=False)[0]
        return latents

    @torch.no_grad()
    def __call__(self, prompts: list[str], noise: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1], (B, 3, H, W): text encoder(s), sampler, VAE decode."""
        latents = self.sample_latents(noise, self.encode_text(prompts))
        latents = latents.to(self.vae.dtype) / self.vae.config.scaling_factor
        image = self.vae.decode(latents, return_dict=False)[0]
        return self.image_processor.postprocess(image, output_type="pt", do_denormalize=[True] * len(image))


def _decoding_vae(models: Models):
    """The VAE as an SDXL user runs it: SDXL's VAE overflows in fp16 (its config says
    force_upcast), so decoding takes an fp32 copy, as TiUEXLPipeline keeps its VAE in fp32.
    Every other VAE decodes as it is."""
    vae = models.vae
    if models.is_xl and vae.dtype == torch.float16 and vae.config.get("force_upcast", False):
        return copy.deepcopy(vae).to(torch.float32)
    return vae
