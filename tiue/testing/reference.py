"""An independent, straightforward TiUE sampler built on diffusers' own full UNet forward.

Used by tests and benchmarks as the yardstick for the one-pass sampler. The encoder
features come from a full forward at the first timestep (captured by hooks); each decoder
step is another full forward at its own timestep with the down and mid outputs replaced
by the captured ones; the DDIM chain runs with scheduler.step. No code of tiue.unet or
tiue.schedule is used.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0


@contextmanager
def _hooks(modules_and_hooks):
    handles = [module.register_forward_hook(hook) for module, hook in modules_and_hooks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def encoder_parts(unet: UNet2DConditionModel) -> list[torch.nn.Module]:
    parts = list(unet.down_blocks)
    if unet.mid_block is not None:
        parts.append(unet.mid_block)
    return parts


@torch.no_grad()
def reference_decoder_outputs(
    unet: UNet2DConditionModel, noise: torch.Tensor, timesteps, text: torch.Tensor, added_cond_kwargs=None
) -> torch.Tensor:
    """(K, B, C, H, W) decoder outputs, one full UNet forward per timestep (`added_cond_kwargs`:
    an SDXL-class UNet's text_embeds and time_ids, passed to every forward)."""
    parts = encoder_parts(unet)
    captured: dict[int, object] = {}

    def capture(i):
        return lambda module, args, output: captured.__setitem__(i, output)

    def replace(i):
        return lambda module, args, output: captured[i]

    with _hooks([(m, capture(i)) for i, m in enumerate(parts)]):
        unet(noise, timesteps[0], text, added_cond_kwargs=added_cond_kwargs)
    outputs = []
    with _hooks([(m, replace(i)) for i, m in enumerate(parts)]):
        for t in timesteps:
            outputs.append(unet(noise, t, text, added_cond_kwargs=added_cond_kwargs).sample)
    return torch.stack(outputs)


@torch.no_grad()
def reference_loopfree_latents(
    unet: UNet2DConditionModel,
    scheduler_config,
    noise: torch.Tensor,
    text: torch.Tensor,
    num_steps: int,
    added_cond_kwargs=None,
) -> torch.Tensor:
    """z_0 of TiUE sampling, by a per-step scheduler.step chain over reference decoder outputs."""
    unet = copy.deepcopy(unet)
    unet.set_attn_processor(AttnProcessor2_0())  # diffusers' own attention, not tiue's
    scheduler = DDIMScheduler.from_config(scheduler_config)
    scheduler.set_timesteps(num_steps)
    outputs = reference_decoder_outputs(unet, noise, scheduler.timesteps, text, added_cond_kwargs)
    z = noise
    for t, out in zip(scheduler.timesteps, outputs):
        z = scheduler.step(out, t, z, eta=0.0).prev_sample
    return z
