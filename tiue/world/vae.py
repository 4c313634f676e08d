"""A small AutoencoderKL for the shapes world, trained on the generator's images.

Three levels (downsampling 4): a 32x32 picture becomes an 8x8x4 latent, so the teacher UNet
works on 64 positions, as SD's works on 64x64. After training, the scaling factor is set so
that scaled latents have unit variance, as SD's 0.18215 does for its VAE.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL

from tiue.world.checkpoints import LoopParts, StageCheckpoint, run_steps
from tiue.world.datasets import WorldTensors
from tiue.world.training import ProgressLog

__all__ = ["VAESettings", "build_world_vae", "train_vae", "latent_scaling_factor"]


@dataclass
class VAESettings:
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    layers_per_block: int = 1
    steps: int = 1500
    batch_size: int = 64
    learning_rate: float = 1e-3
    kl_weight: float = 1e-4  # small: keep detail, only stop the latents drifting in scale
    seed: int = 0


def build_world_vae(settings: VAESettings, resolution: int) -> AutoencoderKL:
    torch.manual_seed(settings.seed)
    levels = len(settings.block_out_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=tuple(settings.block_out_channels),
        latent_channels=4,
        layers_per_block=settings.layers_per_block,
        norm_num_groups=8,
        sample_size=resolution,
    )


def train_vae(settings: VAESettings, data: WorldTensors, resolution: int, checkpoint: StageCheckpoint | None = None) -> AutoencoderKL:
    """Reconstruction (MSE + L1) plus a small KL to N(0, I); returns the VAE in eval mode.
    With a checkpoint, the loop resumes where it was stopped and a finished VAE is reused."""
    vae = build_world_vae(settings, resolution).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    log = ProgressLog("vae", settings.steps)

    def step_fn(step: int) -> None:
        index = torch.randint(len(data), (settings.batch_size,), generator=generator)
        images = data.images[index]
        posterior = vae.encode(images).latent_dist
        reconstruction = vae.decode(posterior.sample(generator=generator)).sample
        rec_loss = F.mse_loss(reconstruction, images) + F.l1_loss(reconstruction, images)
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = rec_loss + settings.kl_weight * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        log.step(step, reconstruction=rec_loss.item(), kl=kl.item())

    run_steps(LoopParts({"vae": vae}, optimizer, schedule, generator), settings.steps, checkpoint, step_fn, log)
    vae.eval()
    vae.register_to_config(scaling_factor=latent_scaling_factor(vae, data.images[:1024]))
    return vae


@torch.no_grad()
def latent_scaling_factor(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """1 / std of sampled latents: the factor that gives the diffusion model unit-variance input."""
    generator = torch.Generator().manual_seed(0)  # the same factor whether or not the run resumed
    latents = torch.cat([vae.encode(chunk).latent_dist.sample(generator=generator) for chunk in images.split(256)])
    return float(1.0 / latents.std())
