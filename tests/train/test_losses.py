"""The loss terms of one step against the formulas of docs/training.md, recomputed independently here.

References below use their own arithmetic: a Python loop for the KL, the scheduler's own DDIM
loop for z_0, x_t from the closed form, and the four teacher passes of the paper's code
(adapter switched off / on), never the trainer's helpers.
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from tiue import TiUEUNet
from tiue.testing.tiny import SD21_SCHEDULER_CONFIG, build_unet
from tiue.train.models import add_fake_score_lora, per_sample_adapters
from tiue.train.randomness import draw_step
from tiue.train.step import DistillationStep

K, B, LAMBDA_KL, GUIDANCE = 2, 2, 0.1, 4.5


def make_parts(prediction_type="epsilon", kl_target="output", lora_loss="alphabar", **schedule):
    scheduler = DDIMScheduler.from_config(dict(SD21_SCHEDULER_CONFIG, prediction_type=prediction_type, **schedule))
    student = TiUEUNet(build_unet("tiny", seed=0))
    teacher = build_unet("tiny", seed=1)
    teacher.requires_grad_(False)
    lora = add_fake_score_lora(teacher, rank=4, alpha=6.0, targets=("to_q", "to_v"))
    # LoRA's B starts at zero (fake score == teacher); make the two differ.
    with torch.no_grad():
        generator = torch.Generator().manual_seed(3)
        for p in lora:
            p.copy_(torch.randn(p.shape, generator=generator) * 0.2)
    null_text = torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(4))
    step = DistillationStep(
        student=student, fake_score=teacher, fake_score_unwrapped=teacher, scheduler=scheduler,
        null_text=null_text, num_steps=K, guidance_scale=GUIDANCE, lambda_kl=LAMBDA_KL,
        device=torch.device("cpu"), kl_target=kl_target, lora_loss=lora_loss,
    )
    text = torch.randn(B, 77, 32, generator=torch.Generator().manual_seed(5))
    draws = draw_step(
        seed=0, micro_step=0, first_sample=0, batch_size=B, latent_shape=(4, 8, 8),
        vsd_timestep_range=(20, 980), num_train_timesteps=1000, null_prompt_probability=0.1,
    )
    return step, student, teacher, scheduler, text, draws


def closed_form_noisy(x0, noise, alpha):
    a = alpha.reshape(-1, 1, 1, 1).double()
    return (a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double()).float()


def as_epsilon(output, noisy, alpha, prediction_type):
    if prediction_type == "epsilon":
        return output
    a = alpha.reshape(-1, 1, 1, 1)
    return a.sqrt() * output + (1 - a).sqrt() * noisy  # v -> epsilon


def gaussian_kl_sum(samples) -> float:
    total = 0.0
    for sample in samples:
        n = sample.double().flatten()
        mean = n.mean().item()
        var = ((n - mean) ** 2).sum().item() / (n.numel() - 1)  # unbiased
        total += -0.5 * (1 + math.log(var) - mean**2 - var)
    return total


@pytest.mark.parametrize("schedule", [{}, {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}])
def test_epsilon_kl_of_a_v_prediction_student_is_the_kl_of_the_loops_noise_predictions(schedule):
    step, student, _, scheduler, text, draws = make_parts("v_prediction", kl_target="epsilon", **schedule)
    result = step.student_losses(text, draws)

    # The noise each decoder predicts, from diffusers' own DDIM loop: eps = (z_t - sqrt(ab) x0) / sqrt(1 - ab).
    with torch.no_grad():
        outputs = student(draws.initial_noise, step.timesteps, text)
        loop = DDIMScheduler.from_config(scheduler.config)
        loop.set_timesteps(K)
        z, epsilons = draws.initial_noise.clone(), []
        for k, t in enumerate(loop.timesteps):
            alphabar = loop.alphas_cumprod[t]
            stepped = loop.step(outputs[k], t, z, eta=0.0)
            epsilons.extend(((z - alphabar.sqrt() * stepped.pred_original_sample) / (1 - alphabar).sqrt()).unbind(0))
            z = stepped.prev_sample
    assert result.loss_kl.item() == pytest.approx(LAMBDA_KL * gaussian_kl_sum(epsilons), rel=1e-4)
    # ... which is not the KL of the raw v outputs.
    assert result.loss_kl.item() != pytest.approx(LAMBDA_KL * gaussian_kl_sum(outputs.flatten(0, 1)), rel=1e-2)


def test_x0_is_the_ddim_chain_and_kl_is_lambda_times_sum():
    step, student, _, scheduler, text, draws = make_parts()
    result = step.student_losses(text, draws)

    with torch.no_grad():
        outputs = student(draws.initial_noise, step.timesteps, text)
        loop = DDIMScheduler.from_config(scheduler.config)
        loop.set_timesteps(K)
        z = draws.initial_noise.clone()
        for k, t in enumerate(loop.timesteps):
            z = loop.step(outputs[k], t, z, eta=0.0).prev_sample
    torch.testing.assert_close(result.x0.detach(), z, rtol=1e-5, atol=1e-5)

    assert result.loss_kl.item() == pytest.approx(LAMBDA_KL * gaussian_kl_sum(outputs.flatten(0, 1)), rel=1e-5)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_vsd_gradient_on_x0_is_sigma_squared_score_difference_over_numel(prediction_type):
    step, _, teacher, scheduler, text, draws = make_parts(prediction_type)
    result = step.student_losses(text, draws)
    x0 = result.x0
    x0.retain_grad()
    result.loss_vsd.backward()

    t = draws.vsd_timesteps
    assert t.dtype == torch.int64 and 20 <= t.min() and t.max() <= 980
    alpha = scheduler.alphas_cumprod[t].float()
    noisy = closed_form_noisy(x0.detach(), draws.vsd_noise, alpha)
    null = step.null_text.text.expand(B, -1, -1)
    with torch.no_grad():
        teacher.disable_adapters()  # the paper's way: four separate passes
        t_cond, t_uncond = (teacher(noisy, t, c).sample for c in (text, null))
        teacher.enable_adapters()
        l_cond, l_uncond = (teacher(noisy, t, c).sample for c in (text, null))
    eps_teacher = as_epsilon(t_uncond + GUIDANCE * (t_cond - t_uncond), noisy, alpha, prediction_type)
    eps_lora = as_epsilon(l_uncond + GUIDANCE * (l_cond - l_uncond), noisy, alpha, prediction_type)
    sigma2 = (1 - alpha).reshape(-1, 1, 1, 1)
    expected = sigma2 * (eps_teacher - eps_lora) / x0.numel()

    assert expected.abs().max() > 0
    torch.testing.assert_close(x0.grad, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_lora_loss_is_alphabar_weighted_mse_with_null_prompt_dropout(prediction_type):
    step, _, teacher, scheduler, text, draws = make_parts(prediction_type)
    draws.lora_null_prompt = torch.tensor([True, False])  # one dropped prompt, one kept
    x0 = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    loss = step.lora_loss(x0, text, draws)

    t = draws.lora_timesteps
    alpha = scheduler.alphas_cumprod[t].float()
    noisy = closed_form_noisy(x0, draws.lora_noise, alpha)
    prompts = torch.stack([step.null_text.text[0], text[1]])
    with torch.no_grad():
        eps = as_epsilon(teacher(noisy, t, prompts).sample, noisy, alpha, prediction_type)
    w = alpha.sqrt().reshape(-1, 1, 1, 1)
    expected = ((w * eps - w * draws.lora_noise) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)

    loss.backward()
    grads = {n: p.grad for n, p in teacher.named_parameters()}
    assert all(g is None for n, g in grads.items() if ".fake_score." not in n), "the teacher base got gradients"
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if ".fake_score." in n)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_lora_loss_teacher_objective_is_unweighted_mse_of_the_teachers_target(prediction_type):
    # v and x0 teachers at zero terminal SNR: at t = 999 alphabar is 0, where the alphabar-weighted
    # loss teaches nothing (an epsilon teacher cannot predict there, so it keeps SD's schedule).
    zero_snr = {} if prediction_type == "epsilon" else dict(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    step, _, teacher, scheduler, text, draws = make_parts(prediction_type, lora_loss="teacher", **zero_snr)
    draws.lora_null_prompt = torch.tensor([False, True])
    draws.lora_timesteps = torch.tensor([999, 400])
    x0 = torch.randn(B, 4, 8, 8, generator=torch.Generator().manual_seed(6))
    loss = step.lora_loss(x0, text, draws)

    alpha = scheduler.alphas_cumprod[draws.lora_timesteps].double()
    assert prediction_type == "epsilon" or alpha[0] == 0
    noisy = closed_form_noisy(x0, draws.lora_noise, alpha.float())
    prompts = torch.stack([text[0], step.null_text.text[0]])
    with torch.no_grad():
        output = teacher(noisy, draws.lora_timesteps, prompts).sample.double()
    a = alpha.reshape(-1, 1, 1, 1)
    target = {
        "epsilon": draws.lora_noise.double(),
        "v_prediction": a.sqrt() * draws.lora_noise.double() - (1 - a).sqrt() * x0.double(),
        "sample": x0.double(),
    }[prediction_type]
    per_sample = ((output - target) ** 2).mean(dim=(1, 2, 3))
    assert per_sample[0] > 0  # the t = 999 row counts
    assert loss.item() == pytest.approx(per_sample.mean().item(), rel=1e-5)

    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in teacher.named_parameters() if ".fake_score." in n)


def test_mixed_adapter_batch_equals_separate_passes():
    """One pass with the adapter chosen per row == a base pass plus a LoRA pass."""
    _, _, teacher, _, text, draws = make_parts()
    x = draws.vsd_noise
    t = torch.tensor([500, 100])
    with torch.no_grad():
        with per_sample_adapters(teacher, ["__base__", "__base__", "fake_score", "fake_score"]):
            mixed = teacher(torch.cat([x, x]), t.repeat(2), torch.cat([text, text])).sample
        teacher.disable_adapters()
        base = teacher(x, t, text).sample
        teacher.enable_adapters()
        lora = teacher(x, t, text).sample
    assert (base - lora).abs().max() > 1e-3  # the adapter matters
    torch.testing.assert_close(mixed, torch.cat([base, lora]), rtol=1e-5, atol=1e-5)


def test_timestep_ranges_and_per_sample_null_prompt_rate():
    draws = draw_step(
        seed=1, micro_step=7, first_sample=0, batch_size=3000, latent_shape=(1, 1, 1),
        vsd_timestep_range=(20, 980), num_train_timesteps=1000, null_prompt_probability=0.1,
        null_prompt_scope="sample",
    )
    vsd, lora = draws.vsd_timesteps, draws.lora_timesteps
    assert vsd.dtype == lora.dtype == torch.int64
    assert 20 <= vsd.min() < 24 and 976 < vsd.max() <= 980  # U{20, ..., 980}, both ends inclusive
    assert 0 <= lora.min() < 4 and 995 < lora.max() <= 999  # U{0, ..., 999}
    assert 0.08 < draws.lora_null_prompt.float().mean() < 0.12


def test_default_null_prompt_drops_the_whole_batch_one_draw_per_step_on_every_process():
    def draws(micro_step, first_sample=0, batch_size=8):
        return draw_step(
            seed=3, micro_step=micro_step, first_sample=first_sample, batch_size=batch_size, latent_shape=(1, 1, 1),
            vsd_timestep_range=(20, 980), num_train_timesteps=1000, null_prompt_probability=0.1,
        ).lora_null_prompt

    steps = [draws(m) for m in range(2000)]
    assert all(bool(d.all()) or not bool(d.any()) for d in steps), "a batch mixed dropped and kept prompts"
    assert 0.08 < sum(bool(d[0]) for d in steps) / len(steps) < 0.12
    dropped_step = next(m for m, d in enumerate(steps) if d[0])
    # Another process's slice of the same global batch makes the same draw.
    assert draws(dropped_step, first_sample=8, batch_size=4).all()


def save_tiny_clip(directory):
    """A tiny CLIPModel (32 px images) with the byte-level tokenizer, saved as a model folder."""
    from transformers import CLIPConfig, CLIPModel

    from tiue.testing.tiny import build_tokenizer

    tokenizer = build_tokenizer(directory / "tokenizer-build")
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=len(tokenizer) - 2,
                         eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4),
        projection_dim=16,
    )
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(directory / "clip")
    tokenizer.save_pretrained(directory / "clip")
    return directory / "clip"


def test_clip_alignment_loss_is_lambda_relu_margin_minus_cosine(tmp_path):
    from transformers import CLIPModel

    from tiue.testing.tiny import build_vae
    from tiue.train.clip_alignment import ClipAlignment

    step, student, _, _, text, draws = make_parts()
    clip_dir = save_tiny_clip(tmp_path)
    vae = build_vae().requires_grad_(False)
    step.clip, step.vae = ClipAlignment(str(clip_dir), torch.device("cpu"), torch.float32), vae
    step.lambda_clip, step.clip_margin = 0.5, 0.9
    captions = ["a red cube", "a blue ball"]
    result = step.student_losses(text, draws, step.clip.text_features(captions))

    model = CLIPModel.from_pretrained(clip_dir)
    tokens = step.clip.tokenizer(captions, padding=True, return_tensors="pt")
    with torch.no_grad():
        images = (vae.decode(result.x0.detach() / vae.config.scaling_factor).sample + 1) / 2
        pixels = torch.nn.functional.interpolate(images, size=(32, 32), mode="bilinear")
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
        image = model.visual_projection(model.vision_model(pixel_values=(pixels - mean) / std).pooler_output)
        words = model.text_projection(model.text_model(**tokens).pooler_output)
    cos = (image * words).sum(-1) / (image.norm(dim=-1) * words.norm(dim=-1))
    expected = 0.5 * torch.clamp(0.9 - cos, min=0).mean()
    assert result.loss_clip.item() == pytest.approx(expected.item(), rel=1e-4)

    result.loss_clip.backward()  # it reaches the student through the VAE decoder
    assert student.unet.conv_in.weight.grad is not None and student.unet.conv_in.weight.grad.abs().sum() > 0
