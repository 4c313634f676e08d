"""Validation image grids sampled from the EMA student, the way users will sample it."""

from __future__ import annotations

import torch

from tiue.train.ema import EMA

__all__ = ["render_validation_grid", "write_validation_grid"]


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
    from tiue.images import make_grid
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


def write_validation_grid(trainer):
    """OUTPUT/validation/step-SSSSSSSS.png from the trainer's EMA student (and to TensorBoard)."""
    if trainer.validation_text is None:
        return None
    from tiue.files import atomic_path

    grid = render_validation_grid(
        student_unet=trainer.student_unet, ema=trainer.ema, vae=trainer.vae, text_encoder=trainer.text_encoder,
        tokenizer=trainer.tokenizer, scheduler=trainer.scheduler, prompt_embeds=trainer.validation_text,
        num_steps=trainer.config.num_steps, resolution=trainer.resolution, seed=trainer.config.seed,
    )
    path = trainer.output_dir / "validation" / f"step-{trainer.step:08d}.png"
    with atomic_path(path, suffix=".png") as tmp:
        grid.save(tmp, format="PNG")
    if trainer.report_to == "tensorboard":
        import numpy as np

        tracker = trainer.accelerator.get_tracker("tensorboard")
        tracker.log_images({"validation": np.asarray(grid)[None]}, step=trainer.step, dataformats="NHWC")
    return path
