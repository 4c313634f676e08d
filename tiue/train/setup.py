"""Everything a run builds before its first step: the accelerator, the models, the optimizers.

Each check that needs no model runs before any model is loaded, so a wrong flag fails in
seconds, not after minutes of loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from tiue.train.config import TrainConfig, flag_name
from tiue.train.models import add_fake_score_lora, load_student, load_teacher_parts
from tiue.train.monitoring import resolve_report_to

__all__ = ["RunModels", "make_accelerator", "build_models", "build_optimizers", "mixed_dtype"]


def make_accelerator(config: TrainConfig, output_dir: Path):
    """(accelerate's Accelerator, the resolved --report-to). DDP across processes, gloo on CPU."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    if config.device not in (None, "cpu", "cuda"):
        raise ValueError(
            f"{flag_name('device')}: expected cpu or cuda (each process takes its own GPU), got {config.device!r}"
        )
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{flag_name('device')}: cuda requested but CUDA is not available on this machine")
    use_cpu = config.device == "cpu" or (config.device is None and not torch.cuda.is_available())
    if use_cpu and config.mixed_precision == "fp16":
        raise ValueError(
            f"{flag_name('mixed_precision')}: fp16 needs a CUDA device (its loss scaling runs there); "
            "on a CPU use bf16 or no"
        )
    report_to = resolve_report_to(config.report_to)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        cpu=use_cpu,
        log_with="tensorboard" if report_to == "tensorboard" else None,
        project_dir=str(output_dir),
        # LR schedulers step once per real optimizer step, not once per process.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    return accelerator, report_to


def mixed_dtype(mixed_precision: str) -> torch.dtype:
    return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)


@dataclass
class RunModels:
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module
    scheduler: DDIMScheduler
    fake_score_unet: torch.nn.Module  # frozen teacher + fake-score LoRA, one UNet
    student: torch.nn.Module  # the TiUEUNet
    lora_params: list[torch.nn.Parameter]
    resolution: int
    latent_shape: tuple[int, int, int]

    @property
    def student_unet(self) -> torch.nn.Module:
        return self.student.unet


def build_models(config: TrainConfig, device: torch.device, weight_dtype: torch.dtype) -> RunModels:
    unet_dtype = weight_dtype if config.half_precision_teacher else torch.float32
    parts = load_teacher_parts(config.teacher, weight_dtype, unet_dtype)
    scheduler = parts.scheduler
    if config.timestep_spacing is not None:
        # Written into the exported scheduler config, so the student samples as it was trained.
        scheduler = DDIMScheduler.from_config(scheduler.config, timestep_spacing=config.timestep_spacing)
    vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
    resolution = config.resolution or parts.unet.config.sample_size * vae_factor
    if resolution % vae_factor:
        raise ValueError(
            f"{flag_name('resolution')}: must be a multiple of {vae_factor} (the VAE's downsampling "
            f"factor), got {resolution}"
        )
    latent = resolution // vae_factor
    if config.vsd_max_timestep >= scheduler.config.num_train_timesteps:
        raise ValueError(
            f"{flag_name('vsd_max_timestep')}: expected < {scheduler.config.num_train_timesteps} "
            f"(the teacher's training timesteps), got {config.vsd_max_timestep}"
        )
    student = load_student(config.student, parts.unet, config.teacher)
    lora_params = add_fake_score_lora(parts.unet, config.lora_rank, config.lora_alpha, config.lora_targets, config.lora_init)
    if config.gradient_checkpointing:
        student.unet.enable_gradient_checkpointing()
        parts.unet.enable_gradient_checkpointing()
    parts.text_encoder.to(device)
    parts.vae.to(device)
    return RunModels(
        tokenizer=parts.tokenizer,
        text_encoder=parts.text_encoder,
        vae=parts.vae,
        scheduler=scheduler,
        fake_score_unet=parts.unet,
        student=student,
        lora_params=lora_params,
        resolution=resolution,
        latent_shape=(parts.unet.config.in_channels, latent, latent),
    )


def build_optimizers(config: TrainConfig, models: RunModels):
    """(student optimizer, LoRA optimizer, student LR schedule, LoRA LR schedule): Adam with
    torch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay), as the official script."""
    from diffusers.optimization import get_scheduler

    student_optimizer = torch.optim.Adam(models.student.parameters(), lr=config.learning_rate)
    lora_optimizer = torch.optim.Adam(models.lora_params, lr=config.learning_rate_lora)
    student_lr = get_scheduler("constant_with_warmup", student_optimizer, num_warmup_steps=config.lr_warmup_steps)
    lora_lr = get_scheduler("constant_with_warmup", lora_optimizer, num_warmup_steps=config.lr_warmup_steps)
    return student_optimizer, lora_optimizer, student_lr, lora_lr
