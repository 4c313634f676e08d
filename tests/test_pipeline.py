
import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from tiue import TiUEPipeline, interpolate_prompts
from tiue.testing.reference import reference_loopfree_latents


@pytest.fixture(scope="module")
def pipe(tiny_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def v_pipe(tiny_v_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_v_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


PROMPTS = ["a photo of a cat", "an astronaut riding a horse", "a red circle"]


def noise_for(pipe, batch, seed=0):
    shape = (batch, 4, pipe.unet.config.sample_size, pipe.unet.config.sample_size)
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", ["pipe", "v_pipe"], ids=["epsilon", "v_prediction"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("num_steps", [1, 2, 4, 8])
def test_one_pass_equals_straightforward_reference(request, which, batch, num_steps):
    pipe = request.getfixturevalue(which)
    prompts, noise = PROMPTS[:batch], noise_for(pipe, batch)
    z0 = pipe(prompts, num_inference_steps=num_steps, latents=noise, output_type="latent").images
    text = pipe.encode_prompt(prompts)
    expected = reference_loopfree_latents(pipe.unet, pipe.scheduler.config, noise, text, num_steps)
    assert ((z0 - expected).abs().max() / expected.abs().max()).item() <= 1e-5


def test_timesteps_follow_the_checkpoint_scheduler(pipe):
    assert isinstance(pipe.scheduler, DDIMScheduler)
    timesteps, coeffs = pipe.loopfree_schedule(4)
    assert timesteps.tolist() == [751, 501, 251, 1]
    assert coeffs.shape == (5,)


def test_timestep_spacing_is_a_choice_and_one_step_leading_warns(pipe):
    from tiue.schedule import loopfree_coefficients

    with pytest.warns(UserWarning, match="K = 1 starts at timestep 1 .*far from the pure noise"):
        timesteps, _ = loopfree_coefficients(pipe.scheduler, 1)
    assert timesteps.tolist() == [1]  # SD2.1-base's leading spacing, steps_offset 1
    trailing = pipe.with_timestep_spacing("trailing")
    assert trailing.unet is pipe.unet and pipe.scheduler.config.timestep_spacing == "leading"
    assert trailing.loopfree_schedule(1)[0].tolist() == [999]
    assert trailing.loopfree_schedule(4)[0].tolist() == [999, 749, 499, 249]
    assert pipe.with_timestep_spacing(None) is pipe
    with pytest.raises(ValueError, match="timestep_spacing: expected one of leading, trailing, linspace, got 'even'"):
        pipe.with_timestep_spacing("even")
    image = trailing("a cat", num_inference_steps=1, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape[0] == 1 and np.isfinite(image).all()


def test_too_many_steps_for_the_schedule_is_a_clear_error(pipe):
    with pytest.raises(ValueError, match="num_inference_steps: 1000 steps .* reach timestep 1000, past its last"):
        pipe.loopfree_schedule(1000)


def test_loop_mode_matches_stable_diffusion_pipeline(pipe):
    noise = noise_for(pipe, 2, seed=1)
    ours = pipe(PROMPTS[:2], num_inference_steps=3, latents=noise, output_type="pt", mode="loop").images
    stock = StableDiffusionPipeline(
        vae=pipe.vae,
        text_encoder=pipe.text_encoder,
        tokenizer=pipe.tokenizer,
        unet=pipe.unet,
        scheduler=pipe.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    stock.set_progress_bar_config(disable=True)
    expected = stock(PROMPTS[:2], num_inference_steps=3, guidance_scale=1.0, latents=noise, output_type="pt").images
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_output_types(pipe):
    kwargs = dict(num_inference_steps=4, latents=noise_for(pipe, 1))
    pil = pipe("a cat", **kwargs).images
    assert isinstance(pil, list) and isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    array = pipe("a cat", output_type="np", **kwargs).images
    assert isinstance(array, np.ndarray) and array.shape == (1, 32, 32, 3)
    tensor = pipe("a cat", output_type="pt", **kwargs).images
    assert tensor.shape == (1, 3, 32, 32) and 0 <= tensor.min() and tensor.max() <= 1
    np.testing.assert_allclose(array[0], tensor[0].permute(1, 2, 0).numpy(), rtol=0, atol=1e-6)
    latent = pipe("a cat", output_type="latent", **kwargs).images
    assert latent.shape == (1, 4, 8, 8)
    decoded = pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close((decoded / 2 + 0.5).clamp(0, 1), tensor, rtol=1e-5, atol=1e-5)
    assert isinstance(pipe("a cat", return_dict=False, **kwargs), tuple)


def test_generator_seeds_like_stable_diffusion(pipe):
    a = pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(7), output_type="latent").images
    b = pipe(PROMPTS[:2], generator=torch.Generator().manual_seed(7), output_type="latent").images
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    per_image = [torch.Generator().manual_seed(s) for s in (7, 8)]
    c = pipe(PROMPTS[:2], generator=per_image, output_type="latent").images
    torch.testing.assert_close(c[0], a[0], rtol=0, atol=0)


def test_num_images_per_prompt_and_size(pipe):
    images = pipe(PROMPTS[:2], num_images_per_prompt=2, height=48, width=24, output_type="pt").images
    assert images.shape == (4, 3, 48, 24)


def test_prompt_embeds_and_interpolation(pipe):
    noise = noise_for(pipe, 1)
    from_text = pipe("a cat", latents=noise, output_type="latent").images
    embeds = pipe.encode_prompt("a cat")
    from_embeds = pipe(prompt_embeds=embeds, latents=noise, output_type="latent").images
    torch.testing.assert_close(from_embeds, from_text, rtol=0, atol=0)

    path = interpolate_prompts(pipe.encode_prompt("a cat"), pipe.encode_prompt("a dog"), 5)
    assert path.shape == (5, 77, 32)
    torch.testing.assert_close(path[0], embeds[0])
    torch.testing.assert_close(path[2], (pipe.encode_prompt("a cat")[0] + pipe.encode_prompt("a dog")[0]) / 2)
    images = pipe(prompt_embeds=path, latents=noise.expand(5, -1, -1, -1), output_type="latent").images
    torch.testing.assert_close(images[0], from_text[0], rtol=1e-5, atol=1e-5)
    slerp = interpolate_prompts(embeds, pipe.encode_prompt("a dog"), 3, method="slerp")
    torch.testing.assert_close(slerp[-1], pipe.encode_prompt("a dog")[0])


BAD_CALLS = [
    (dict(prompt="a cat", num_inference_steps=0), "num_inference_steps"),
    (dict(prompt="a cat", num_inference_steps=1001), "num_inference_steps"),
    (dict(prompt="a cat", height=30), "height"),
    (dict(prompt="a cat", width=-4), "width"),
    (dict(prompt="a cat", latents=torch.zeros(1, 4, 7, 8)), "latents"),
    (dict(prompt=["a", "b"], generator=[torch.Generator()]), "generator"),
    (dict(prompt=[]), "prompt"),
    (dict(prompt="a cat", prompt_embeds=torch.zeros(1, 77, 32)), "prompt, prompt_embeds"),
    (dict(), "prompt, prompt_embeds"),
    (dict(prompt="a cat", output_type="jpeg"), "output_type"),
    (dict(prompt="a cat", mode="fast"), "mode"),
    (dict(prompt="a cat", num_images_per_prompt=0), "num_images_per_prompt"),
]


@pytest.mark.parametrize("kwargs, argument", BAD_CALLS, ids=[a for _, a in BAD_CALLS])
def test_bad_input_names_the_argument(pipe, kwargs, argument):
    with pytest.raises((ValueError, TypeError)) as error:
        pipe(**kwargs)
    assert str(error.value).startswith(argument)


def test_missing_model_folder(tmp_path):
    with pytest.raises((OSError, ValueError), match="does-not-exist"):
        TiUEPipeline.from_pretrained(str(tmp_path / "does-not-exist"))
