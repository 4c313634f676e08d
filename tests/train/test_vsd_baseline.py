"""The one-step VSD baseline (K = 1): it must learn, and it must run where its authors run it."""

import pytest
import torch

from tiue.train import Trainer
from tiue.train import losses
from tiue.train.randomness import draw_step


def first_step_inputs(trainer):
    """The text and random draws of the trainer's first micro-step, drawn as the trainer draws them."""
    config = trainer.config
    indices, first_sample = trainer.sampler.batch(trainer.position)
    draws = draw_step(
        seed=config.seed, micro_step=0, first_sample=first_sample, batch_size=trainer.batch_size,
        latent_shape=trainer.latent_shape, vsd_timestep_range=(config.vsd_min_timestep, config.vsd_max_timestep),
        num_train_timesteps=1000, null_prompt_probability=config.lora_null_prompt_probability,
    )
    return trainer._encode([trainer.captions[i] for i in indices]), draws


@torch.no_grad()
def x0_and_vsd_target(trainer, text, draws):
    """The student's x0 and the point VSD pulls it to: x0 - sigma_t^2 (eps_teacher - eps_fake)."""
    step = trainer.step_fn
    _, x0 = step.student_forward(text, draws)
    noisy = trainer.scheduler.add_noise(x0, draws.vsd_noise, draws.vsd_timesteps)
    eps_teacher, eps_fake = step.teacher_and_fake_score_eps(noisy, draws.vsd_timesteps, text)
    return x0, x0 - losses.vsd_gradient(eps_teacher, eps_fake, step.alphas_cumprod[draws.vsd_timesteps])


def one_vsd_step(make_config, tmp_path, spacing):
    trainer = Trainer(make_config(
        max_steps=1, num_steps=1, lambda_kl=0.0, timestep_spacing=spacing, learning_rate=1e-6,
        learning_rate_lora=1e-12, output_dir=str(tmp_path / spacing),
    ))
    with torch.no_grad():  # a fake score that differs from the teacher (a fresh LoRA equals it)
        generator = torch.Generator().manual_seed(0)
        for name, p in trainer.fake_score_unet.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=generator))
    text, draws = first_step_inputs(trainer)
    before, target = x0_and_vsd_target(trainer, text, draws)
    trainer.fit()
    after, _ = x0_and_vsd_target(trainer, text, draws)
    return trainer, before, after, target


def test_a_vsd_step_moves_the_one_step_students_x0_towards_the_teachers_target(make_config, tmp_path):
    trainer, before, after, target = one_vsd_step(make_config, tmp_path, "trailing")
    assert trainer.step_fn.timesteps.tolist() == [999]  # where SwiftBrush and SD-Turbo sample
    assert (target - before).abs().max() > 0
    distance_before = (before - target).norm()
    distance_after = (after - target).norm()
    assert distance_after < 0.9 * distance_before, (distance_before, distance_after)


def test_leading_spacing_puts_the_one_step_student_at_t1_where_x0_barely_depends_on_it(make_config, tmp_path):
    with pytest.warns(UserWarning, match="K = 1 starts at timestep 1 .* far from the pure noise"):
        trainer, before, after, _ = one_vsd_step(make_config, tmp_path, "leading")
    assert trainer.step_fn.timesteps.tolist() == [1]
    _, trailing_before, trailing_after, _ = one_vsd_step(make_config, tmp_path, "trailing")
    # The same update moves x0 far less at t = 1: z_0 is almost the input noise there.
    assert (after - before).norm() < 0.2 * (trailing_after - trailing_before).norm()


def test_the_spacing_is_recorded_in_the_exported_student(make_config, tmp_path):
    from tiue.pipeline import TiUEPipeline

    trainer, *_ = one_vsd_step(make_config, tmp_path, "trailing")
    pipe = TiUEPipeline.from_pretrained(trainer.output_dir / "final")
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    timesteps, _ = pipe.loopfree_schedule(1)
    assert timesteps.tolist() == [999]
