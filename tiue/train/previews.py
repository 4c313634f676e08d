"""Validation image grids sampled from the EMA student, the way users will sample it."""

from __future__ import annotations

import torch

from tiue.train.ema import EMA

__all__ = ["render_validation_grid"]


@torch.no_grad()
def render_validation_grid(
    *,
    student_unet,
    ema: EMA,
    vae,
    text_encoder,
    tokenizer,
    scheduler,
    prompt_embeds: torch.Tensor,
    num_steps: int,
    resolution: int,
    seed: int,
):
    """One PIL grid, one image per prompt, from the EMA weights swapped into the student.

    The student's own weights are restored bit for bit afterwards. Seeds are fixed per prompt
    so grids of different steps are comparable.
    """
    from tiue.cli.sample import make_grid
    from tiue.pipeline import TiUEPipeline

    pipe = TiUEPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=student_unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    device = prompt_embeds.device
    generators = [torch.Generator(device).manual_seed(seed + i) for i in range(prompt_embeds.shape[0])]
    was_training = student_unet.training
    student_unet.eval()
    try:
        with ema.swapped_into(student_unet):
            images = pipe(
                prompt_embeds=prompt_embeds.to(student_unet.dtype),
                num_inference_steps=num_steps,
                height=resolution,
                width=resolution,
                generator=generators,
                output_type="pil",
            ).images
    finally:
        student_unet.train(was_training)
    return make_grid(images)
