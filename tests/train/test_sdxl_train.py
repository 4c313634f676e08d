"""`tiue train` from an SDXL-class teacher, on a tiny random SDXL pipeline built in the tests.

References are diffusers' own StableDiffusionXLPipeline (prompt encoding, the null prompt, the
time ids) and the paper's four separate teacher passes, each given its added conditions
explicitly; never the trainer's conditioning helpers.
"""

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from tiue import TiUEXLPipeline
from tiue.latents import vae_scale_factor
from tiue.train import Trainer
from tiue.train.checkpoint import read_checkpoint
from tiue.train.models import lora_state_dict

GUIDANCE = 4.5


@pytest.fixture
def xl_config(make_config, xl_dir):
    def make(**overrides):
        return make_config(**dict(dict(teacher=str(xl_dir), resolution=32, guidance_scale=GUIDANCE), **overrides))

    return make


def stock_xl(trainer, force_zeros):
    """diffusers' SDXL pipeline over the run's own text encoders."""
    models = trainer.models
    return StableDiffusionXLPipeline(
        vae=models.vae, text_encoder=models.text_encoder, text_encoder_2=models.text_encoder_2,
        tokenizer=models.tokenizer, tokenizer_2=models.tokenizer_2, unet=trainer.fake_score_unet,
        scheduler=trainer.scheduler, force_zeros_for_empty_prompt=force_zeros, add_watermarker=False,
    )


@pytest.mark.parametrize("force_zeros", [True, False])
def test_captions_and_null_prompt_are_encoded_as_diffusers_sdxl_does(xl_config, force_zeros):
    trainer = Trainer(xl_config(max_steps=1))
    assert trainer.models.force_zeros_for_empty_prompt is True  # the folder's (diffusers' default)
    trainer.prompt_encoder.force_zeros_for_empty_prompt = force_zeros
    captions = ["a photo of a cat", "an astronaut riding a horse"]
    expected = stock_xl(trainer, force_zeros).encode_prompt(captions, device="cpu", do_classifier_free_guidance=True)
    embeds, negative, pooled, negative_pooled = expected

    conditioning = trainer.prompt_encoder(captions)
    null = trainer.prompt_encoder.null()
    torch.testing.assert_close(conditioning.text, embeds, rtol=0, atol=0)
    torch.testing.assert_close(conditioning.added["text_embeds"], pooled, rtol=0, atol=0)
    # diffusers encodes one "" per prompt, a batch of 2 against our 1: equal up to batching round-off.
    torch.testing.assert_close(null.text.expand(2, -1, -1), negative, rtol=0, atol=1e-6)
    torch.testing.assert_close(null.added["text_embeds"].expand(2, -1), negative_pooled, rtol=0, atol=1e-6)
    assert bool((null.text == 0).all()) is force_zeros


@pytest.mark.parametrize("resolution", [32, 48])
def test_resolution_sets_the_time_ids_as_diffusers_does(xl_config, resolution):
    trainer = Trainer(xl_config(max_steps=1, resolution=resolution))
    stock = stock_xl(trainer, True)
    size = (resolution, resolution)
    expected = stock._get_add_time_ids(
        size, (0, 0), size, dtype=torch.float32,
        text_encoder_projection_dim=trainer.models.text_encoder_2.config.projection_dim,
    )
    conditioning = trainer.prompt_encoder(["a", "b"])
    torch.testing.assert_close(conditioning.added["time_ids"], expected.repeat(2, 1), rtol=0, atol=0)
    torch.testing.assert_close(trainer.null_text.added["time_ids"], expected, rtol=0, atol=0)
    factor = vae_scale_factor(trainer.vae)
    assert trainer.latent_shape == (4, resolution // factor, resolution // factor)


def perturb_lora(trainer):
    """LoRA's B starts at zero (fake score == teacher); make the two differ."""
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in trainer.lora_params:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)


def draws_of(trainer, null_prompt=None):
    from tiue.train.randomness import draw_step

    draws = draw_step(
        seed=0, micro_step=0, first_sample=0, batch_size=2, latent_shape=trainer.latent_shape,
        vsd_timestep_range=(20, 980), num_train_timesteps=1000, null_prompt_probability=0.1,
    )
    if null_prompt is not None:
        draws.lora_null_prompt = torch.tensor(null_prompt)
    return draws


def test_student_teacher_and_fake_score_all_get_the_added_conditions(xl_config):
    trainer = Trainer(xl_config(max_steps=1))
    perturb_lora(trainer)
    step, unet, draws = trainer.step_fn, trainer.fake_score_unet, draws_of(trainer)
    text = trainer.prompt_encoder(["a red cube", "a blue ball"])
    null = trainer.prompt_encoder.null()
    null_added = {k: v.expand(2, *v.shape[1:]) for k, v in null.added.items()}

    result = step.student_losses(text, draws)
    x0 = result.x0
    x0.retain_grad()
    result.loss_vsd.backward()

    with torch.no_grad():  # the student: the TiUEUNet given the added conditions explicitly
        outputs = trainer.models.student(draws.initial_noise, step.timesteps, text.text, text.added)
        expected_x0 = torch.einsum("k,kbchw->bchw", step.coeffs[1:].float(), outputs) + step.coeffs[0] * draws.initial_noise
    torch.testing.assert_close(x0.detach(), expected_x0, rtol=1e-5, atol=1e-5)

    t = draws.vsd_timesteps
    alpha = trainer.scheduler.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    noisy = (alpha.sqrt() * x0.detach() + (1 - alpha).sqrt() * draws.vsd_noise).float()
    with torch.no_grad():  # the paper's four passes, the adapter switched off / on
        unet.disable_adapters()
        t_cond = unet(noisy, t, text.text, added_cond_kwargs=text.added).sample
        t_uncond = unet(noisy, t, null.text.expand(2, -1, -1), added_cond_kwargs=null_added).sample
        unet.enable_adapters()
        l_cond = unet(noisy, t, text.text, added_cond_kwargs=text.added).sample
        l_uncond = unet(noisy, t, null.text.expand(2, -1, -1), added_cond_kwargs=null_added).sample
    eps_teacher = t_uncond + GUIDANCE * (t_cond - t_uncond)
    eps_fake = l_uncond + GUIDANCE * (l_cond - l_uncond)
    expected = (1 - alpha) * (eps_teacher - eps_fake) / x0.numel()
    assert expected.abs().max() > 0
    torch.testing.assert_close(x0.grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())

    # The added conditions matter: other time ids give the teacher another epsilon.
    other = {"text_embeds": text.added["text_embeds"], "time_ids": text.added["time_ids"] * 2}
    with torch.no_grad():
        unet.disable_adapters()
        moved = unet(noisy, t, text.text, added_cond_kwargs=other).sample
        unet.enable_adapters()
    assert (moved - t_cond).abs().max() > 1e-4


def test_fake_score_loss_drops_captions_to_the_sdxl_null_prompt(xl_config):
    trainer = Trainer(xl_config(max_steps=1))
    perturb_lora(trainer)
    step, unet = trainer.step_fn, trainer.fake_score_unet
    draws = draws_of(trainer, null_prompt=[True, False])
    text = trainer.prompt_encoder(["a red cube", "a blue ball"])
    null = trainer.prompt_encoder.null()
    x0 = torch.randn(2, *trainer.latent_shape, generator=torch.Generator().manual_seed(6))
    loss = step.lora_loss(x0, text, draws)

    t = draws.lora_timesteps
    alpha = trainer.scheduler.alphas_cumprod[t].float().reshape(-1, 1, 1, 1)
    noisy = (alpha.sqrt() * x0 + (1 - alpha).sqrt() * draws.lora_noise).float()
    rows = torch.stack([null.text[0], text.text[1]])
    added = {k: torch.stack([null.added[k][0], text.added[k][1]]) for k in text.added}
    assert (rows[0] == 0).all() and (added["text_embeds"][0] == 0).all()  # force_zeros_for_empty_prompt
    with torch.no_grad():
        eps = unet(noisy, t, rows, added_cond_kwargs=added).sample
    expected = ((alpha.sqrt() * (eps - draws.lora_noise)) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_two_steps_from_an_sdxl_teacher_with_resume_and_a_final_pipeline(xl_config, tmp_path):
    straight = Trainer(xl_config(max_steps=2, output_dir=str(tmp_path / "straight"), validation_prompts=("a red cube",)))
    lora_before = {k: v.clone() for k, v in lora_state_dict(straight.fake_score_unet).items()}
    student_before = {k: v.clone() for k, v in straight.student_unet.state_dict().items()}
    straight.fit()
    student = straight.student_unet.state_dict()
    assert any(not torch.equal(student[k], student_before[k]) for k in student)
    assert any(not torch.equal(v, lora_before[k]) for k, v in lora_state_dict(straight.fake_score_unet).items())

    first = Trainer(xl_config(max_steps=1, output_dir=str(tmp_path / "resumed")))
    first.fit()
    resumed = Trainer(xl_config(max_steps=2, output_dir=str(tmp_path / "resumed"), resume="latest"))
    assert resumed.step == 1
    resumed.fit()
    saved = read_checkpoint(resumed.last_checkpoint)
    assert saved.state["step"] == 2
    for name, a, b in (
        ("student", resumed.student_unet.state_dict(), straight.student_unet.state_dict()),
        ("ema", resumed.ema.state_dict(), straight.ema.state_dict()),
        ("lora", lora_state_dict(resumed.fake_score_unet), lora_state_dict(straight.fake_score_unet)),
    ):
        assert all(torch.equal(a[k], b[k]) for k in b), f"{name}: resumed run differs from the straight one"

    final = tmp_path / "straight" / "final"
    index = json.loads((final / "model_index.json").read_text())
    assert index["_class_name"] == "TiUEXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    assert (tmp_path / "straight" / "validation" / "step-00000002.png").is_file()
    pipe = TiUEXLPipeline.from_pretrained(final)
    pipe.set_progress_bar_config(disable=True)
    images = pipe("a red cube", num_inference_steps=2, height=32, width=32, output_type="np",
                  generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def test_cli_distills_an_sdxl_teacher(xl_dir, captions_file, tmp_path):
    from tiue.cli import main

    out = tmp_path / "cli"
    code = main([
        "train", "--teacher", str(xl_dir), "--captions", str(captions_file), "--output-dir", str(out),
        "--max-steps", "2", "--batch-size", "2", "--num-steps", "2", "--resolution", "32", "--device", "cpu",
        "--report-to", "none", "--validation-prompts", "a blue ball",
    ])
    assert code == 0
    assert json.loads((out / "final" / "model_index.json").read_text())["_class_name"] == "TiUEXLPipeline"
    assert "| steps trained | 2 |" in (out / "final" / "README.md").read_text()
