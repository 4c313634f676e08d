"""The shapes world's teacher: an SD-shaped UNet2DConditionModel trained on VAE latents.

Standard latent-diffusion training, as SD's: epsilon prediction under SD2.1-base's noise
schedule, uniform timesteps, 10% of captions replaced by the empty prompt so that the model
also learns the unconditional score that classifier-free guidance needs. The text encoder is
trained jointly (it starts random: there is no pretrained CLIP for this world's words).

Optionally the schedule is rescaled to zero terminal SNR with v-prediction (Lin et al. 2023,
"Common Diffusion Noise Schedules and Sample Steps are Flawed"). On 8x8 latents SD's schedule
leaves a flat background readable in x_999, so the model takes the background colour from the
noise instead of the caption; at zero terminal SNR only the caption can say it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from tiue.schedule import SD21_SCHEDULER_CONFIG, TIMESTEP_SPACINGS
from tiue.text import embed_tokens, tokenize_prompts
from tiue.world.checkpoints import LoopParts, StageCheckpoint, run_steps
from tiue.world.datasets import WorldTensors
from tiue.world.training import ExponentialMovingAverage, ProgressLog

__all__ = ["TeacherSettings", "teacher_scheduler_config", "training_target", "build_teacher_unet", "train_teacher", "encode_latents"]

PREDICTION_TYPES = ("epsilon", "v_prediction")


@dataclass
class TeacherSettings:
    block_out_channels: tuple[int, ...] = (64, 128, 128)
    layers_per_block: int = 1
    attention_heads: int = 4
    steps: int = 2000
    batch_size: int = 128
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    caption_dropout: float = 0.1
    ema_decay: float = 0.999
    seed: int = 0
    # The noise schedule, written into the teacher's scheduler config: SD2.1-base's by default.
    prediction_type: str = "epsilon"
    zero_terminal_snr: bool = False
    timestep_spacing: str = "leading"

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"teacher.prediction_type: expected one of {', '.join(PREDICTION_TYPES)}, got {self.prediction_type!r}"
            )
        if self.timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"teacher.timestep_spacing: expected one of {', '.join(TIMESTEP_SPACINGS)}, got {self.timestep_spacing!r}"
            )
        if self.zero_terminal_snr and self.prediction_type == "epsilon":
            # At alphabar = 0 an epsilon prediction says nothing about x0.
            raise ValueError("teacher.zero_terminal_snr: needs prediction_type 'v_prediction', got 'epsilon'")


def teacher_scheduler_config(settings: TeacherSettings) -> dict:
    """SD2.1-base's scheduler config with the teacher's prediction type, spacing and terminal SNR."""
    return dict(
        SD21_SCHEDULER_CONFIG,
        prediction_type=settings.prediction_type,
        rescale_betas_zero_snr=settings.zero_terminal_snr,
        timestep_spacing=settings.timestep_spacing,
    )


def training_target(noise_schedule: DDPMScheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict from x_t: the noise, or the velocity
    v = sqrt(alphabar) * noise - sqrt(1 - alphabar) * latents."""
    if noise_schedule.config.prediction_type == "v_prediction":
        return noise_schedule.get_velocity(latents, noise, timesteps)
    return noise


def build_teacher_unet(settings: TeacherSettings, latent_size: int, cross_attention_dim: int) -> UNet2DConditionModel:
    """SD's block layout at a small width: cross-attention in all but the deepest level."""
    torch.manual_seed(settings.seed)
    levels = len(settings.block_out_channels)
    return UNet2DConditionModel(
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=tuple(settings.block_out_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (levels - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (levels - 1),
        layers_per_block=settings.layers_per_block,
        attention_head_dim=settings.attention_heads,  # diffusers reads this as the head count
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=True,  # as SD 2.x
        norm_num_groups=32,
    )


@torch.no_grad()
def encode_latents(vae: AutoencoderKL, images: torch.Tensor, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std of every image, computed once; training samples from them."""
    means, stds = [], []
    for part in images.split(chunk):
        dist = vae.encode(part).latent_dist
        means.append(dist.mean)
        stds.append(dist.std)
    return torch.cat(means), torch.cat(stds)


def train_teacher(
    settings: TeacherSettings,
    data: WorldTensors,
    vae: AutoencoderKL,
    tokenizer: CLIPTokenizer,
    text_encoder: CLIPTextModel,
    checkpoint: StageCheckpoint | None = None,
    unet: UNet2DConditionModel | None = None,
) -> tuple[UNet2DConditionModel, CLIPTextModel]:
    """Returns the EMA UNet and EMA text encoder, in eval mode; resumes from `checkpoint`.
    `unet`: start from these weights (a fine-tuning stage) instead of a new UNet."""
    mean, std = encode_latents(vae.eval(), data.images)
    scale = vae.config.scaling_factor
    latent_size = mean.shape[-1]
    if unet is None:
        unet = build_teacher_unet(settings, latent_size, text_encoder.config.hidden_size)
    # A previous stage's EMA copies come frozen.
    unet.train().requires_grad_(True)
    text_encoder.train().requires_grad_(True)
    noise_schedule = DDPMScheduler.from_config(teacher_scheduler_config(settings))
    tokens, null_tokens = tokenize_prompts(tokenizer, data.captions), tokenize_prompts(tokenizer, [""])

    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    warmup = max(1, settings.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / warmup))
    unet_ema = ExponentialMovingAverage(unet, settings.ema_decay)
    text_ema = ExponentialMovingAverage(text_encoder, settings.ema_decay)
    generator = torch.Generator().manual_seed(settings.seed)
    log = ProgressLog(checkpoint.stage if checkpoint is not None else "teacher", settings.steps)

    def step_fn(step: int) -> None:
        index = torch.randint(len(data), (settings.batch_size,), generator=generator)
        latents = (mean[index] + std[index] * torch.randn(mean[index].shape, generator=generator)) * scale
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(noise_schedule.config.num_train_timesteps, (settings.batch_size,), generator=generator)
        noisy = noise_schedule.add_noise(latents, noise, timesteps)
        batch_ids, batch_mask = tokens.input_ids[index].clone(), tokens.attention_mask[index].clone()
        dropped = torch.rand(settings.batch_size, generator=generator) < settings.caption_dropout
        batch_ids[dropped], batch_mask[dropped] = null_tokens.input_ids, null_tokens.attention_mask
        text = embed_tokens(text_encoder, batch_ids, batch_mask, batch_ids.device)
        prediction = unet(noisy, timesteps, encoder_hidden_states=text).sample
        loss = F.mse_loss(prediction, training_target(noise_schedule, latents, noise, timesteps))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        schedule.step()
        unet_ema.update(unet)
        text_ema.update(text_encoder)
        log.step(step, loss=loss.item())

    parts = LoopParts(
        {"unet": unet, "text_encoder": text_encoder}, optimizer, schedule, generator,
        {"unet": unet_ema, "text_encoder": text_ema},
    )
    run_steps(parts, settings.steps, checkpoint, step_fn, log)
    return unet_ema.model.eval(), text_ema.model.eval()
