"""--lambda-kl keeps the official KL-to-VSD ratio whatever the per-process batch.

L_vsd is a mean over the batch and L_kl a sum over its K*B decoder outputs (as the official
script), so a fixed weight on the sum would change the method with the batch split. The weight is
lambda_kl at --kl-reference-batch-size prompts per process (8, the official run) and scales by
reference / B otherwise.
"""

import pytest
import torch
from diffusers import DDIMScheduler

from tiue import TiUEUNet
from tiue.testing.tiny import SD21_SCHEDULER_CONFIG, build_unet
from tiue.train import TrainConfig
from tiue.train.models import add_fake_score_lora
from tiue.train.randomness import StepDraws, draw_step
from tiue.train.step import DistillationStep

K = 2


def make_step(config: TrainConfig, batch_size: int) -> DistillationStep:
    torch.manual_seed(0)
    teacher = build_unet("tiny", seed=1)
    teacher.requires_grad_(False)
    add_fake_score_lora(teacher, rank=4, alpha=6.0, targets=("to_q", "to_v"))
    return DistillationStep.from_config(
        config, student=TiUEUNet(build_unet("tiny", seed=0)), fake_score=teacher, fake_score_unwrapped=teacher,
        scheduler=DDIMScheduler.from_config(SD21_SCHEDULER_CONFIG),
        null_text=torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(4)),
        device=torch.device("cpu"), batch_size=batch_size,
    )


def doubled(draws: StepDraws) -> StepDraws:
    return StepDraws(**{k: torch.cat([v, v]) for k, v in vars(draws).items()})


def test_the_kl_to_vsd_ratio_does_not_depend_on_the_per_process_batch():
    config = TrainConfig(teacher="t", captions="c", num_steps=K)
    text = torch.randn(2, 77, 32, generator=torch.Generator().manual_seed(5))
    draws = draw_step(
        seed=0, micro_step=0, first_sample=0, batch_size=2, latent_shape=(4, 8, 8),
        vsd_timestep_range=(20, 980), num_train_timesteps=1000, null_prompt_probability=0.1,
    )
    two = make_step(config, 2).student_losses(text, draws)
    # The same two prompts twice over: the same samples, so the same method must give the same losses.
    four = make_step(config, 4).student_losses(torch.cat([text, text]), doubled(draws))
    assert four.loss_vsd.item() == pytest.approx(two.loss_vsd.item(), rel=1e-5)
    assert four.loss_kl.item() == pytest.approx(two.loss_kl.item(), rel=1e-5)
    assert two.loss_kl.item() > 0


def test_the_official_batch_weighs_the_kl_sum_with_lambda_kl_itself():
    config = TrainConfig(teacher="t", captions="c")
    assert config.kl_reference_batch_size == 8  # the official per-GPU batch
    assert config.kl_sum_weight(8) == config.lambda_kl == 0.1
    assert config.kl_sum_weight(2) == pytest.approx(0.4)  # a quarter of the prompts, each weighs 4x
    assert TrainConfig(teacher="t", captions="c", kl_reference_batch_size=16).kl_sum_weight(16) == 0.1


def test_the_kl_reference_batch_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="--kl-reference-batch-size: expected an integer from 1 to 65536, got 0"):
        TrainConfig(teacher="t", captions="c", kl_reference_batch_size=0).check()
