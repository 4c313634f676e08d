"""Validation image grids sampled from the EMA student, the way users will sample it."""

from __future__ import annotations

import torch

from tiue.train.ema import EMA

__all__ = ["render_validation_grid", "write_validation_grid"]


@torch.no_grad()
def render_validation_grid(*, pipe, ema: EMA, conditioning, num_steps: int, resolution: int, seed: int):
    """One PIL grid, one image per prompt, from the EMA weights swapped into the student.

    pipe: a TiUEPipeline (or TiUEXLPipeline) over the student UNet; conditioning: the prompts'
    tiue.train.conditioning.Conditioning. The student's own weights are restored bit for bit
    afterwards. Seeds are fixed per prompt so grids of different steps are comparable.
    """
    from tiue.images import make_grid

    student_unet = pipe.unet
    pipe.set_progress_bar_config(disable=True)
    device = conditioning.text.device
    generators = [torch.Generator(device).manual_seed(seed + i) for i in range(conditioning.batch_size)]
    inputs = {"prompt_embeds": conditioning.text.to(student_unet.dtype)}
    if conditioning.added is not None:  # SDXL: the pipeline makes the same time ids from height/width
        inputs["pooled_prompt_embeds"] = conditioning.added["text_embeds"].to(student_unet.dtype)
    was_training = student_unet.training
    student_unet.eval()
    try:
        with ema.swapped_into(student_unet):
            images = pipe(
                **inputs,
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
        pipe=trainer.models.pipeline(trainer.student_unet), ema=trainer.ema, conditioning=trainer.validation_text,
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
