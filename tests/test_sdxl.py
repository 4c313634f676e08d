"""TiUE for SDXL-class UNets: the split with added conditions and TiUEXLPipeline, on tiny random
SDXL pipelines built in code (tiue.testing.tiny_xl)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionXLPipeline

from tiue import TiUEPipeline, TiUEUNet, TiUEXLPipeline
from tiue.testing.reference import reference_decoder_outputs, reference_loopfree_latents
from tiue.testing.tiny import build_unet
from tiue.testing.tiny_xl import build_xl_unet

PROMPTS = ["a photo of a cat", "an astronaut riding a horse"]


def relative_error(actual, expected):
    return ((actual - expected).abs().max() / expected.abs().max()).item()


@pytest.fixture(scope="module")
def pipe(xl_dir):
    # "trailing" spacing: K = 1 runs at t = 999, as one-step students do (no far-from-noise warning).
    pipe = TiUEXLPipeline.from_pretrained(xl_dir).with_timestep_spacing("trailing")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def stock_pipeline(pipe):
    """diffusers' own SDXL pipeline on the same components, with a DDIM scheduler."""
    stock = StableDiffusionXLPipeline(
        vae=pipe.vae, text_encoder=pipe.text_encoder, text_encoder_2=pipe.text_encoder_2,
        tokenizer=pipe.tokenizer, tokenizer_2=pipe.tokenizer_2, unet=pipe.unet,
        scheduler=DDIMScheduler.from_config(pipe.scheduler.config), add_watermarker=False,
    )
    stock.set_progress_bar_config(disable=True)
    return stock


def noise_for(batch, seed=0):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def added_conditions(pipe, pooled, size=(32, 32)):
    time_ids = pipe.time_ids(size, (0, 0), size, pooled.shape[0], pooled.dtype, pooled.device)
    return {"text_embeds": pooled, "time_ids": time_ids}


# -- the split -----------------------------------------------------------------------------


@pytest.mark.parametrize("act", [None, "silu"], ids=["sdxl", "time-embed-act"])
@pytest.mark.parametrize("batch", [1, 2])
def test_split_with_added_conditions_equals_full_unet_per_timestep(act, batch):
    # time_embedding_act_fn="silu" checks the activation is applied to emb(t) + aug, as diffusers does.
    unet = build_xl_unet(time_embedding_act_fn=act)
    generator = torch.Generator().manual_seed(batch)
    noise = torch.randn(batch, 4, 8, 8, generator=generator)
    text = torch.randn(batch, 77, 64, generator=generator)
    added = {
        "text_embeds": torch.randn(batch, 32, generator=generator),
        "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32], [64, 48, 8, 4, 32, 32]][:batch]),
    }
    timesteps = torch.tensor([999, 749, 499, 249])
    expected = reference_decoder_outputs(unet, noise, timesteps, text, added)
    with torch.no_grad():
        actual = TiUEUNet(unet)(noise, timesteps, text, added)
    assert actual.shape == (4, batch, 4, 8, 8)
    assert relative_error(actual, expected) <= 1e-5


def test_aug_is_computed_once_by_the_encoder_and_reused():
    unet = build_xl_unet()
    wrapper = TiUEUNet(unet)
    added = {"text_embeds": torch.randn(2, 32), "time_ids": torch.tensor([[32.0, 32, 0, 0, 32, 32]] * 2)}
    with torch.no_grad():
        features = wrapper.encode(torch.randn(2, 4, 8, 8), 999, torch.randn(2, 77, 64), added)
        assert features.added_embedding.shape == (2, unet.config.block_out_channels[0] * 4)
        text = torch.randn(2, 77, 64)
        reused = wrapper.decode(features, torch.tensor([999, 499]), text)
        recomputed = wrapper.decode(features, torch.tensor([999, 499]), text, added_cond_kwargs=added)
    torch.testing.assert_close(reused, recomputed, rtol=0, atol=0)


def test_added_conditions_are_checked():
    wrapper = TiUEUNet(build_xl_unet())
    with pytest.raises(ValueError, match="added_cond_kwargs: .* missing time_ids"):
        wrapper.encode(torch.randn(1, 4, 8, 8), 999, torch.randn(1, 77, 64), {"text_embeds": torch.randn(1, 32)})
    with pytest.raises(ValueError, match=r"added_cond_kwargs: text_embeds must have one row per sample \(2\)"):
        wrapper.encode(torch.randn(2, 4, 8, 8), 999, torch.randn(2, 77, 64),
                       {"text_embeds": torch.randn(1, 32), "time_ids": torch.zeros(2, 6)})
    sd = TiUEUNet(build_unet("tiny"))
    assert not sd.has_added_conditions
    with pytest.raises(ValueError, match="added_cond_kwargs: this UNet .* takes none"):
        sd.encode(torch.randn(1, 4, 8, 8), 999, torch.randn(1, 77, 32), {"text_embeds": torch.randn(1, 32)})


def test_sd_unets_split_as_before():
    """SD 1.x/2.x: no added embedding, and the split still equals the full UNet."""
    unet = build_unet("tiny")
    noise, text = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    timesteps = torch.tensor([751, 501, 251, 1])
    with torch.no_grad():
        features = TiUEUNet(unet).encode(noise, timesteps[0], text)
        actual = TiUEUNet(unet)(noise, timesteps, text)
    assert features.added_embedding is None
    assert relative_error(actual, reference_decoder_outputs(unet, noise, timesteps, text)) <= 1e-5


# -- the pipeline --------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("num_steps", [1, 2, 4])
def test_one_pass_equals_straightforward_reference(pipe, batch, num_steps):
    prompts, noise = PROMPTS[:batch], noise_for(batch)
    z0 = pipe(prompts, num_inference_steps=num_steps, latents=noise, output_type="latent").images
    text, pooled = pipe.encode_prompt(prompts)
    expected = reference_loopfree_latents(
        pipe.unet, pipe.scheduler.config, noise, text, num_steps, added_conditions(pipe, pooled)
    )
    assert relative_error(z0, expected) <= 1e-5


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0], ids=["unguided", "guided"])
def test_loop_mode_matches_stable_diffusion_xl_pipeline(pipe, guidance_scale):
    noise = noise_for(2, seed=1)
    kwargs = dict(num_inference_steps=3, latents=noise, output_type="pt", guidance_scale=guidance_scale)
    ours = pipe(PROMPTS, mode="loop", **kwargs).images
    expected = stock_pipeline(pipe)(PROMPTS, **kwargs).images
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)


def test_micro_conditioning_reaches_the_unet_as_diffusers_passes_it(pipe):
    noise = noise_for(1, seed=2)
    kwargs = dict(num_inference_steps=2, latents=noise, output_type="latent",
                  original_size=(64, 48), crops_coords_top_left=(8, 4), target_size=(32, 32))
    ours = pipe(PROMPTS[0], mode="loop", **kwargs).images
    expected = stock_pipeline(pipe)(PROMPTS[0], guidance_scale=1.0, **kwargs).images
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    default = pipe(PROMPTS[0], mode="loop", num_inference_steps=2, latents=noise, output_type="latent").images
    assert relative_error(ours, default) > 1e-4  # the ids change the image


def test_guided_pass_is_exact_cfg_of_the_pass(pipe):
    noise, scale = noise_for(2, seed=3), 4.0
    kwargs = dict(num_inference_steps=4, latents=noise, output_type="latent")
    guided = pipe(PROMPTS, guidance_scale=scale, negative_prompt=["blurry", "dark"], **kwargs).images
    conditional = pipe(PROMPTS, **kwargs).images
    unconditional = pipe(["blurry", "dark"], **kwargs).images
    expected = unconditional + scale * (conditional - unconditional)
    assert relative_error(guided, expected) <= 1e-5
    # Without a negative prompt, force_zeros_for_empty_prompt makes the unconditional rows zeros.
    assert pipe.config.force_zeros_for_empty_prompt
    zeros_guided = pipe(PROMPTS, guidance_scale=scale, **kwargs).images
    text, pooled = pipe.encode_prompt(PROMPTS)
    zeros = pipe(prompt_embeds=torch.zeros_like(text), pooled_prompt_embeds=torch.zeros_like(pooled), **kwargs).images
    assert relative_error(zeros_guided, zeros + scale * (conditional - zeros)) <= 1e-5


def test_prompt_embeddings_equal_diffusers_encode_prompt(pipe):
    stock = stock_pipeline(pipe)
    text, pooled = pipe.encode_prompt(PROMPTS, prompt_2=["a dog", "a bird"], num_images_per_prompt=2)
    expected = stock.encode_prompt(PROMPTS, prompt_2=["a dog", "a bird"], num_images_per_prompt=2,
                                   do_classifier_free_guidance=False)
    torch.testing.assert_close(text, expected[0], rtol=0, atol=0)
    torch.testing.assert_close(pooled, expected[2], rtol=0, atol=0)
    assert text.shape == (4, 77, 64) and pooled.shape == (4, 32)


def test_prompt_embeds_input_equals_prompt_input(pipe):
    noise = noise_for(2)
    from_text = pipe(PROMPTS, latents=noise, output_type="latent").images
    text, pooled = pipe.encode_prompt(PROMPTS)
    from_embeds = pipe(prompt_embeds=text, pooled_prompt_embeds=pooled, latents=noise, output_type="latent").images
    torch.testing.assert_close(from_embeds, from_text, rtol=0, atol=0)


def test_output_types_and_sizes(pipe):
    pil = pipe("a cat", num_inference_steps=2).images
    assert isinstance(pil[0], PIL.Image.Image) and pil[0].size == (32, 32)
    array = pipe(PROMPTS, num_images_per_prompt=2, height=48, width=24, output_type="np").images
    assert isinstance(array, np.ndarray) and array.shape == (4, 48, 24, 3) and np.isfinite(array).all()
    latent = pipe("a cat", output_type="latent", latents=noise_for(1)).images
    tensor = pipe("a cat", output_type="pt", latents=noise_for(1)).images
    decoded = pipe.vae.decode(latent / pipe.vae.config.scaling_factor).sample
    torch.testing.assert_close((decoded / 2 + 0.5).clamp(0, 1), tensor, rtol=1e-5, atol=1e-5)


BAD_CALLS = [
    (dict(prompt_embeds=torch.zeros(1, 77, 64)), "pooled_prompt_embeds"),
    (dict(prompt_embeds=torch.zeros(1, 77, 64), pooled_prompt_embeds=torch.zeros(2, 32)), "pooled_prompt_embeds"),
    (dict(prompt="a cat", prompt_2=["a", "b"]), "prompt_2"),
    (dict(prompt="a cat", original_size=(32,)), "original_size"),
    (dict(prompt="a cat", crops_coords_top_left=(-1, 0)), "crops_coords_top_left"),
    (dict(prompt="a cat", height=30), "height"),
    (dict(prompt_embeds=torch.zeros(1, 77, 32), pooled_prompt_embeds=torch.zeros(1, 32)), "prompt_embeds"),
    (dict(prompt_embeds=torch.zeros(1, 77, 64), pooled_prompt_embeds=torch.zeros(1, 32),
          negative_prompt_embeds=torch.zeros(1, 77, 64), guidance_scale=2.0), "negative_pooled_prompt_embeds"),
]


@pytest.mark.parametrize("kwargs, argument", BAD_CALLS, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD_CALLS)])
def test_bad_input_names_the_argument(pipe, kwargs, argument):
    with pytest.raises((ValueError, TypeError)) as error:
        pipe(**kwargs)
    assert str(error.value).startswith(argument)


# -- folders, sample, CLI --------------------------------------------------------------------


def test_save_pretrained_names_tiue_xl_pipeline_and_reloads(pipe, tmp_path):
    from tiue.sampling import pipeline_class_for

    pipe.save_pretrained(tmp_path / "student")
    index = json.loads((tmp_path / "student" / "model_index.json").read_text())
    assert index["_class_name"] == "TiUEXLPipeline" and index["force_zeros_for_empty_prompt"] is True
    card = (tmp_path / "student" / "README.md").read_text()
    assert "tiue.TiUEXLPipeline.from_pretrained" in card and "StableDiffusionXLPipeline.from_pretrained" in card
    assert pipeline_class_for(str(tmp_path / "student")) is TiUEXLPipeline
    reloaded = TiUEXLPipeline.from_pretrained(tmp_path / "student")
    reloaded.set_progress_bar_config(disable=True)
    noise = noise_for(1)
    torch.testing.assert_close(
        reloaded("a cat", latents=noise, output_type="latent").images,
        pipe("a cat", latents=noise, output_type="latent").images, rtol=0, atol=0,
    )


def test_sample_recognises_sdxl_folders(xl_dir, tiny_pipeline_dir):
    import tiue
    from tiue.sampling import clear_pipeline_cache, load_pipeline, pipeline_class_for

    assert pipeline_class_for(str(xl_dir)) is TiUEXLPipeline
    assert pipeline_class_for(str(tiny_pipeline_dir)) is TiUEPipeline
    try:
        assert isinstance(load_pipeline(str(xl_dir), device="cpu"), TiUEXLPipeline)
        images = tiue.sample(PROMPTS, model=str(xl_dir), seed=0, device="cpu", num_inference_steps=2)
    finally:
        clear_pipeline_cache()
    assert len(images) == 2 and images[0].size == (32, 32)


def test_cli_sample_writes_images_for_an_sdxl_folder(xl_dir, tmp_path):
    from tiue.cli import main
    from tiue.sampling import clear_pipeline_cache

    out = tmp_path / "out"
    try:
        code = main(["sample", "--model", str(xl_dir), "--prompt", "a cat", "--prompt", "a dog",
                     "--steps", "2", "--device", "cpu", "--out", str(out)])
    finally:
        clear_pipeline_cache()
    assert code in (0, None)
    assert sorted(p.name for p in out.iterdir()) == ["00000-seed0.png", "00001-seed1.png", "grid.png"]
    assert PIL.Image.open(out / "00000-seed0.png").size == (32, 32)


# -- fast path -----------------------------------------------------------------------------


@pytest.mark.slow
def test_fast_path_compiles_and_matches_eager(xl_dir):
    """One inductor compile of the SDXL one pass on CPU (about a minute on two cores)."""
    eager = TiUEXLPipeline.from_pretrained(xl_dir).with_timestep_spacing("trailing")
    fast = TiUEXLPipeline.from_pretrained(xl_dir).with_timestep_spacing("trailing")
    for p in (eager, fast):
        p.set_progress_bar_config(disable=True)
    stats = fast.enable_fast_path(backend="inductor")
    kwargs = dict(num_inference_steps=2, latents=noise_for(2, seed=4), output_type="pt")
    got = fast(PROMPTS, **kwargs).images
    expected = eager(PROMPTS, **kwargs).images
    assert stats.compiled_signatures == 1 and stats.compile_seconds > 0
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    with torch._dynamo.config.patch(error_on_recompile=True):  # new prompts: same graph
        fast(["a red circle", "a blue square"], **kwargs)
    assert stats.compiled_signatures == 1


def test_refiner_like_folders_are_refused(pipe):
    components = dict(pipe.components, text_encoder=None)
    with pytest.raises(ValueError, match="text_encoder: TiUEXLPipeline needs both text encoders.*refiner"):
        TiUEXLPipeline(**components)
