"""Row d: TiUE sampling the way the paper's public code runs it, re-created for timing.

The UNet encoder runs once, as in tiue; then every decoder input (each skip feature, the mid
block output, the text embeddings) is copied K times with `.repeat` into one K*B batch, the
decoder runs on that batch, and the K outputs drive a per-step DDIM chain of
`scheduler.step` calls in Python. Eager, diffusers' default attention. Composed from the
UNet's own blocks, so it computes what tiue computes, by the slower route.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from transformers import CLIPTextModel, CLIPTokenizer

__all__ = ["PaperWaySampler"]


def _needs_text(block) -> bool:
    return getattr(block, "has_cross_attention", False)


class PaperWaySampler:
    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        scheduler_config: dict,
        num_steps: int = 4,
    ):
        self.unet, self.vae = unet, vae
        self.text_encoder, self.tokenizer = text_encoder, tokenizer
        self.scheduler = DDIMScheduler.from_config(scheduler_config)
        self.num_steps = num_steps
        self.image_processor = VaeImageProcessor(vae_scale_factor=2 ** (len(vae.config.block_out_channels) - 1))

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        ids = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length,
            truncation=True, return_tensors="pt",
        ).input_ids
        return self.text_encoder(ids.to(self.unet.device))[0]

    def _time_embedding(self, sample: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self.unet.time_embedding(self.unet.get_time_embed(sample, timesteps), None)

    @torch.no_grad()
    def sample_latents(self, noise: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """z_0 from the initial noise and text embeddings."""
        unet, steps, batch = self.unet, self.num_steps, noise.shape[0]
        self.scheduler.set_timesteps(steps, device=noise.device)
        timesteps = self.scheduler.timesteps

        # Encoder, once, at the first timestep.
        emb = self._time_embedding(noise, timesteps[0])
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
        text_k = text.repeat(steps, 1, 1)
        step_times = timesteps.repeat_interleave(batch)
        emb_k = self._time_embedding(hidden, step_times)
        for i, block in enumerate(unet.up_blocks):
            res, skips = tuple(skips[-len(block.resnets):]), skips[: -len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if skips else None
            extra = {"encoder_hidden_states": text_k} if _needs_text(block) else {}
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
        """Images in [0, 1], (B, 3, H, W): text encoder, sampler, VAE decode."""
        latents = self.sample_latents(noise, self.encode_text(prompts))
        image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
        return self.image_processor.postprocess(image, output_type="pt", do_denormalize=[True] * len(image))
