"""Everything a run builds before its first step: the accelerator, the Hub repo, the models,
the optimizers and their LR schedules.

Each check that needs no model runs before any model is loaded, so a wrong flag fails in
seconds, not after minutes of loading (or, for --push-to-hub, after hours of training).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler

from tiue.latents import vae_scale_factor
from tiue.train.config import TrainConfig, flag_name
from tiue.train.models import add_fake_score_lora, load_student, load_teacher_parts
from tiue.train.monitoring import resolve_report_to

__all__ = [
    "RunModels", "check_optional_packages", "make_accelerator", "prepare_hub_repo", "build_models", "load_options",
    "build_optimizers", "build_lr_schedule", "mixed_dtype",
]

# (setting, value that needs the package, the package): optional packages some flags need.
_OPTIONAL_PACKAGES = (("report_to", "wandb", "wandb"), ("use_8bit_adam", True, "bitsandbytes"))


def check_optional_packages(config: TrainConfig) -> None:
    """Refuse a flag whose package is not installed, before anything is loaded."""
    for name, value, package in _OPTIONAL_PACKAGES:
        if getattr(config, name) == value and importlib.util.find_spec(package) is None:
            given = flag_name(name) + ("" if value is True else f" {value}")
            raise ValueError(f"{given} needs the {package} package: pip install {package}")


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
        log_with=None if report_to == "none" else report_to,
        project_dir=str(output_dir),
        # LR schedulers step once per real optimizer step, not once per process.
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    return accelerator, report_to


def prepare_hub_repo(config: TrainConfig, accelerator, hub=None):
    """(Hub client, repo id) for --push-to-hub, the repo created now (exist_ok), before any model
    loads: an offline machine, a missing or read-only token or a bad repo name fails here, not
    after the run. `hub`: an object with HfApi's create_repo and upload_folder (default HfApi)."""
    if hub is None:
        from huggingface_hub import HfApi, is_offline_mode

        if is_offline_mode():
            raise ValueError(
                f"{flag_name('push_to_hub')}: the Hugging Face Hub is offline here (HF_HUB_OFFLINE is set); unset it, "
                "or drop --push-to-hub and upload OUTPUT/final later (hf upload REPO OUTPUT/final .)"
            )
        hub = HfApi(token=config.hub_token)
    repo_id, error = config.hub_repo_id(), None
    if accelerator.is_main_process:
        try:
            repo_id = hub.create_repo(repo_id, exist_ok=True).repo_id
        except Exception as caught:  # whatever the Hub answers (network, auth, name), said in one line
            error = (
                f"{flag_name('push_to_hub')}: cannot create or reach the Hub repo {repo_id!r} "
                f"({type(caught).__name__}: {str(caught).splitlines()[0] if str(caught) else ''}); check the network, "
                f"the token ({flag_name('hub_token')}, HF_TOKEN or `hf auth login`) and {flag_name('hub_model_id')}"
            )
    if accelerator.num_processes > 1:  # every process stops, or none
        from accelerate.utils import broadcast_object_list

        repo_id, error = broadcast_object_list([repo_id, error])
    if error is not None:
        raise ValueError(error)
    return hub, repo_id


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
    # SDXL-class teachers only (None otherwise):
    tokenizer_2: object | None = None
    text_encoder_2: torch.nn.Module | None = None
    force_zeros_for_empty_prompt: bool | None = None

    @property
    def student_unet(self) -> torch.nn.Module:
        return self.student.unet

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None

    def prompt_encoder(self, device: torch.device):
        """Captions to the Conditioning every UNet of the run gets; SDXL's time ids follow
        --resolution (original and target size, crop corner (0, 0))."""
        from tiue.train.conditioning import PromptEncoder, xl_time_ids

        if not self.is_xl:
            return PromptEncoder((self.tokenizer,), (self.text_encoder,), device)
        return PromptEncoder(
            (self.tokenizer, self.tokenizer_2), (self.text_encoder, self.text_encoder_2), device,
            time_ids=xl_time_ids(self.resolution), force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
        )

    def pipeline(self, unet: torch.nn.Module):
        """A sampling pipeline over the run's frozen parts and `unet` (TiUEXLPipeline for SDXL)."""
        from tiue.pipeline import TiUEPipeline

        common = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet, scheduler=self.scheduler)
        if not self.is_xl:
            return TiUEPipeline(**common)
        from tiue.pipeline_xl import TiUEXLPipeline

        return TiUEXLPipeline(
            **common, text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2,
            force_zeros_for_empty_prompt=self.force_zeros_for_empty_prompt,
        )


def load_options(config: TrainConfig) -> dict[str, str]:
    """from_pretrained's revision and variant, those given (none given: the library's defaults)."""
    return {name: getattr(config, name) for name in ("revision", "variant") if getattr(config, name) is not None}


def build_models(config: TrainConfig, device: torch.device, weight_dtype: torch.dtype) -> RunModels:
    from tiue.embedded import resolve_model

    if config.revision is not None and Path(resolve_model(config.teacher)).is_dir():
        raise ValueError(
            f"{flag_name('revision')}: {config.revision!r} picks a version of a Hub repo, but {flag_name('teacher')} "
            f"{config.teacher!r} is a local folder (it holds one version); drop {flag_name('revision')}"
        )
    options = load_options(config)
    unet_dtype = weight_dtype if config.half_precision_teacher else torch.float32
    parts = load_teacher_parts(config.teacher, weight_dtype, unet_dtype, **options)
    scheduler = parts.scheduler
    if config.timestep_spacing is not None:
        # Written into the exported scheduler config, so the student samples as it was trained.
        scheduler = DDIMScheduler.from_config(scheduler.config, timestep_spacing=config.timestep_spacing)
    vae_factor = vae_scale_factor(parts.vae)
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
    student = load_student(config.student, parts.unet, config.teacher, **options)
    lora_params = add_fake_score_lora(parts.unet, config.lora_rank, config.lora_alpha, config.lora_targets, config.lora_init)
    if config.gradient_checkpointing:
        student.unet.enable_gradient_checkpointing()
        parts.unet.enable_gradient_checkpointing()
    for text_encoder in parts.text_encoders:
        text_encoder.to(device)
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
        tokenizer_2=parts.tokenizer_2,
        text_encoder_2=parts.text_encoder_2,
        force_zeros_for_empty_prompt=parts.force_zeros_for_empty_prompt,
    )


def build_optimizers(config: TrainConfig, models: RunModels, max_steps: int):
    """(student optimizer, LoRA optimizer, student LR schedule, LoRA LR schedule): Adam with
    torch's defaults (betas 0.9/0.999, eps 1e-8, no weight decay), as the official script, or
    bitsandbytes' 8-bit AdamW with the same settings (--use-8bit-adam); both schedules are
    --lr-scheduler over the run's `max_steps` optimizer steps."""
    adam = _adam_class(config.use_8bit_adam)
    student_optimizer = adam(models.student.parameters(), lr=config.learning_rate)
    lora_optimizer = adam(models.lora_params, lr=config.learning_rate_lora)
    student_lr = build_lr_schedule(config, student_optimizer, max_steps)
    lora_lr = build_lr_schedule(config, lora_optimizer, max_steps)
    return student_optimizer, lora_optimizer, student_lr, lora_lr


def build_lr_schedule(config: TrainConfig, optimizer: torch.optim.Optimizer, max_steps: int):
    """diffusers' --lr-scheduler: --lr-warmup-steps of linear warm-up from 0, then the schedule
    (decaying ones reach their end at `max_steps`). It steps once per applied optimizer step."""
    from diffusers.optimization import get_scheduler

    return get_scheduler(
        config.lr_scheduler, optimizer, num_warmup_steps=config.lr_warmup_steps, num_training_steps=max_steps
    )


def _adam_class(eight_bit: bool):
    if not eight_bit:
        return torch.optim.Adam
    from functools import partial

    import bitsandbytes as bnb

    # AdamW8bit's default weight decay is 1e-2; 0 makes it the official script's plain Adam.
    return partial(bnb.optim.AdamW8bit, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
