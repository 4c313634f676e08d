"""The forward computations of one distillation step: student, VSD targets, LoRA loss.

Batched to do fewer, bigger passes than the paper's code:
- the student runs its encoder once and all K decoders as one batch (TiUEUNet), and its z_0
  is one contraction over K (no K-fold copies of decoder inputs, no per-step loop);
- the four VSD predictions (teacher / fake-score x conditional / unconditional) are ONE
  no-grad UNet pass over 4B rows, the adapter chosen per row by peft's mixed adapter batch;
- the KL over the K*B decoder outputs is one `tiue.ops.gaussian_kl` call.
Backward passes and optimizer steps belong to the trainer.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from diffusers import DDIMScheduler

from tiue.conditioning import Conditioning, as_conditioning
from tiue.schedule import ddim_chain, loopfree_coefficients
from tiue.train import losses
from tiue.train.models import BASE_ADAPTER, LORA_ADAPTER, per_sample_adapters
from tiue.train.randomness import StepDraws

__all__ = ["DistillationStep", "StudentResult", "StepLosses"]


@dataclass
class StudentResult:
    x0: torch.Tensor  # the student's z_0, fp32, differentiable
    loss_vsd: torch.Tensor
    loss_kl: torch.Tensor
    loss_clip: torch.Tensor = field(default_factory=lambda: torch.zeros(()))

    @property
    def loss(self) -> torch.Tensor:
        return self.loss_vsd + self.loss_kl + self.loss_clip.to(self.loss_vsd.device)


@dataclass
class StepLosses:
    """The loss values of one (micro-)step, as floats, for logging and averaging."""

    vsd: float = 0.0
    kl: float = 0.0
    lora: float = 0.0
    clip: float = 0.0

    @property
    def student(self) -> float:
        return self.vsd + self.kl + self.clip

    def __add__(self, other: "StepLosses") -> "StepLosses":
        return StepLosses(self.vsd + other.vsd, self.kl + other.kl, self.lora + other.lora, self.clip + other.clip)

    def scaled(self, factor: float) -> "StepLosses":
        return StepLosses(self.vsd * factor, self.kl * factor, self.lora * factor, self.clip * factor)

    def as_tensor(self, device) -> torch.Tensor:
        return torch.tensor([self.vsd, self.kl, self.lora, self.clip], device=device, dtype=torch.float64)

    @classmethod
    def from_tensor(cls, values: torch.Tensor) -> "StepLosses":
        return cls(*values.tolist())


class DistillationStep:
    """Losses of one step, given the student and the fake-score UNet (each may be DDP-wrapped).

    Args:
        student: callable (z_K, timesteps (K,), text[, added_cond_kwargs]) -> (K, B, C, h, w),
            i.e. a TiUEUNet.
        fake_score: the teacher UNet carrying the LORA_ADAPTER adapter.
        fake_score_unwrapped: the same UNet unwrapped, where the LoRA layers live (for hooks).
        scheduler: the DDIMScheduler built from the teacher's scheduler config.
        null_text: the empty prompt's Conditioning (one row), or its (1, L, D) text embedding
            for an SD 1.x/2.x teacher; computed once per run.
        lambda_kl: the weight of the KL sum over this process's K*B decoder outputs (from a
            TrainConfig: its kl_sum_weight for the per-process batch).
        clip, vae, lambda_clip, clip_margin: the optional CLIP alignment loss (clip=None: off).
        autocast: a context-manager factory for the modules accelerate did not wrap (the VAE).

    Every `text` argument below is a tiue.conditioning.Conditioning: the text embeddings and, for
    SDXL-class teachers, the added conditions, which every UNet pass of the step gets alike. A
    bare (B, L, D) tensor stands for an SD teacher's conditioning.
    """

    def __init__(
        self,
        student,
        fake_score,
        fake_score_unwrapped: torch.nn.Module,
        scheduler: DDIMScheduler,
        null_text: Conditioning | torch.Tensor,
        num_steps: int,
        guidance_scale: float,
        lambda_kl: float,
        device: torch.device,
        kl_target: str = "output",
        lora_loss: str = "alphabar",
        clip=None,
        vae=None,
        lambda_clip: float = 0.0,
        clip_margin: float = 1.0,
        autocast=nullcontext,
    ):
        self.student = student
        self.fake_score = fake_score
        self.fake_score_unwrapped = fake_score_unwrapped
        self.scheduler = scheduler
        self.null_text = as_conditioning(null_text)
        self.guidance_scale = guidance_scale
        self.lambda_kl = lambda_kl
        self.prediction_type = scheduler.config.prediction_type
        self.timesteps, self.coeffs = loopfree_coefficients(scheduler, num_steps)
        # The KL's inputs: the raw decoder outputs (the paper's, for its epsilon teacher), or
        # their noise predictions, which a v-prediction student's outputs are not.
        self.kl_target = kl_target
        _, self.chain = ddim_chain(scheduler, num_steps)
        self.lora_objective = lora_loss
        self.timesteps = self.timesteps.to(device)
        self.alphas_cumprod = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
        self.clip, self.vae = clip, vae
        self.lambda_clip, self.clip_margin = lambda_clip, clip_margin
        self.autocast = autocast

    @classmethod
    def from_config(cls, config, *, student, fake_score, fake_score_unwrapped, scheduler, null_text, device,
                    batch_size: int, clip=None, vae=None, autocast=nullcontext) -> "DistillationStep":
        """The step a TrainConfig describes, over the given models, for `batch_size` prompts per
        process (the KL sum's weight depends on it: TrainConfig.kl_sum_weight)."""
        return cls(
            student=student, fake_score=fake_score, fake_score_unwrapped=fake_score_unwrapped, scheduler=scheduler,
            null_text=null_text, num_steps=config.num_steps, guidance_scale=config.guidance_scale,
            lambda_kl=config.kl_sum_weight(batch_size), device=device, kl_target=config.kl_target, lora_loss=config.lora_loss, clip=clip, vae=vae, lambda_clip=config.lambda_clip,
            clip_margin=config.clip_margin, autocast=autocast,
        )

    def null_batch(self, batch: int) -> Conditioning:
        return self.null_text.expand(batch)

    # -- student: x0, KL and VSD -----------------------------------------------------------

    def student_forward(self, text: Conditioning | torch.Tensor, draws: StepDraws) -> tuple[torch.Tensor, torch.Tensor]:
        """(decoder outputs (K, B, C, h, w), x0 = the loop-free z_0)."""
        text = as_conditioning(text)
        added = () if text.added is None else (text.added,)
        outputs = self.student(draws.initial_noise, self.timesteps, text.text, *added)
        return outputs, losses.loopfree_latent(draws.initial_noise, outputs, self.coeffs)

    def kl_inputs(self, outputs: torch.Tensor, initial_noise: torch.Tensor) -> torch.Tensor:
        if self.kl_target == "output":
            return outputs
        return losses.decoder_epsilons(initial_noise, outputs, self.chain, self.prediction_type)

    @torch.no_grad()
    def teacher_and_fake_score_eps(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, text: Conditioning | torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """CFG epsilon of the frozen teacher and of the fake-score teacher, in ONE pass.

        Rows: [teacher cond | teacher uncond | lora cond | lora uncond], B each.
        """
        batch = noisy.shape[0]
        rows = torch.cat([noisy] * 4)
        text = as_conditioning(text)
        conditions = Conditioning.cat([text, self.null_batch(batch).to(text.text.dtype)] * 2)
        adapters = [BASE_ADAPTER] * (2 * batch) + [LORA_ADAPTER] * (2 * batch)
        with per_sample_adapters(self.fake_score_unwrapped, adapters):
            out = self.fake_score(rows, timesteps.repeat(4), **conditions.unet_kwargs(), return_dict=False)[0].float()
        teacher_cond, teacher_uncond, lora_cond, lora_uncond = out.chunk(4)
        alpha = self.alphas_cumprod[timesteps]
        eps_teacher = losses.to_epsilon(
            losses.classifier_free_guidance(teacher_cond, teacher_uncond, self.guidance_scale),
            noisy, alpha, self.prediction_type,
        )
        eps_lora = losses.to_epsilon(
            losses.classifier_free_guidance(lora_cond, lora_uncond, self.guidance_scale),
            noisy, alpha, self.prediction_type,
        )
        return eps_teacher, eps_lora

    def student_losses(
        self, text: Conditioning | torch.Tensor, draws: StepDraws, clip_text_features: torch.Tensor | None = None
    ) -> StudentResult:
        outputs, x0 = self.student_forward(text, draws)
        loss_kl = losses.kl_loss(self.kl_inputs(outputs, draws.initial_noise), self.lambda_kl)
        noisy = self.scheduler.add_noise(x0.detach(), draws.vsd_noise, draws.vsd_timesteps)
        eps_teacher, eps_lora = self.teacher_and_fake_score_eps(noisy, draws.vsd_timesteps, text)
        loss_vsd = losses.vsd_loss(x0, eps_teacher, eps_lora, self.alphas_cumprod[draws.vsd_timesteps])
        result = StudentResult(x0=x0, loss_vsd=loss_vsd, loss_kl=loss_kl)
        if self.clip is not None:
            result.loss_clip = self.lambda_clip * self.clip_loss(x0, clip_text_features)
        return result

    def clip_loss(self, x0: torch.Tensor, clip_text_features: torch.Tensor) -> torch.Tensor:
        """relu(tau - cos) of CLIP features of the decoded z_0 and of the captions."""
        from tiue.train.clip_alignment import alignment_loss

        with self.autocast():
            latents = (x0 / self.vae.config.scaling_factor).to(self.vae.dtype)
            images = self.vae.decode(latents).sample
            image_features = self.clip.image_features(images)
        return alignment_loss(image_features, clip_text_features, self.clip_margin)

    # -- fake-score LoRA -------------------------------------------------------------------

    def lora_loss(self, x0: torch.Tensor, text: Conditioning | torch.Tensor, draws: StepDraws) -> torch.Tensor:
        """Denoising loss of the fake-score teacher on the student's (detached) samples: the
        official alphabar-weighted epsilon MSE, or (lora_loss="teacher") the teacher's own
        objective."""
        noisy = self.scheduler.add_noise(x0.detach(), draws.lora_noise, draws.lora_timesteps)
        text = as_conditioning(text)
        text = text.where(~draws.lora_null_prompt, self.null_batch(text.batch_size))
        out = self.fake_score(noisy, draws.lora_timesteps, **text.unet_kwargs(), return_dict=False)[0].float()
        alpha = self.alphas_cumprod[draws.lora_timesteps]
        if self.lora_objective == "teacher":
            return losses.teacher_objective_loss(out, x0.detach(), draws.lora_noise, alpha, self.prediction_type)
        eps_lora = losses.to_epsilon(out, noisy, alpha, self.prediction_type)
        return losses.lora_loss(eps_lora, draws.lora_noise, alpha)
