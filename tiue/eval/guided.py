"""Teacher sampling with classifier-free guidance: a plain DDIM (eta = 0) loop.

TiUEPipeline's loop mode has no guidance (a distilled student needs none), so teacher rows
of an evaluation sample here: each step runs the UNet once on the unconditional and
conditional halves of one batch, eps = eps_u + g * (eps_c - eps_u), and takes a DDIM step.
The scheduler is a DDIMScheduler built from the pipeline's config, as the student's is.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler

__all__ = ["sample_with_guidance"]


@torch.no_grad()
def sample_with_guidance(
    pipe,
    prompts: list[str],
    num_inference_steps: int,
    guidance_scale: float,
    generator: list[torch.Generator] | torch.Generator | None = None,
    output_type: str = "np",
):
    """Images for `prompts` ((B, H, W, 3) floats in [0, 1] for "np", or "latent" z_0).

    guidance_scale 1 skips the unconditional pass (same result, half the work).
    """
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps: expected an integer >= 1, got {num_inference_steps}")
    if guidance_scale < 1.0:
        raise ValueError(f"guidance_scale: expected a value >= 1 (1 means no guidance), got {guidance_scale}")
    device = pipe._execution_device
    cond = pipe.encode_prompt(prompts, device)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    latents = pipe.prepare_latents(len(prompts), size, size, cond.dtype, device, generator)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_inference_steps, device=device)
    guided = guidance_scale != 1.0
    text = torch.cat([pipe.encode_prompt([""], device).expand_as(cond), cond]) if guided else cond
    for t in scheduler.timesteps:
        model_input = torch.cat([latents, latents]) if guided else latents
        model_input = scheduler.scale_model_input(model_input, t)
        output = pipe.unet(model_input, t, encoder_hidden_states=text, return_dict=False)[0]
        if guided:
            uncond_out, cond_out = output.chunk(2)
            output = uncond_out + guidance_scale * (cond_out - uncond_out)
        latents = scheduler.step(output, t, latents, eta=0.0, return_dict=False)[0]
    if output_type == "latent":
        return latents
    image = pipe.vae.decode(latents.to(pipe.vae.dtype) / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return pipe.image_processor.postprocess(image, output_type=output_type, do_denormalize=[True] * image.shape[0])
