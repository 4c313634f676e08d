"""What a diffusers user expects of TiUEPipeline: guidance arguments, the user's scheduler in
loop mode, model CPU offload and the VAE/attention memory switches, and honest saved folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, EulerDiscreteScheduler, StableDiffusionPipeline

from tiue import TiUEPipeline
from tiue.model_card import SAFETY_NOTE, model_card

PROMPTS = ["a photo of a cat", "a red circle"]
NEGATIVES = ["blurry", "a blue square"]


@pytest.fixture
def pipe(tiny_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def noise(pipe, batch, seed=0):
    size = pipe.unet.config.sample_size
    return torch.randn(batch, 4, size, size, generator=torch.Generator().manual_seed(seed))


def latent(pipe, prompt, **kwargs):
    return pipe(prompt, output_type="latent", latents=noise(pipe, len(prompt)), **kwargs).images


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


# -- guidance ------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [3.0, 7.5])
def test_guided_loopfree_pass_is_cfg_of_two_unguided_passes(pipe, scale):
    """The combination is linear: guiding each decoder output equals guiding the two z_0s."""
    unconditional = latent(pipe, NEGATIVES)
    conditional = latent(pipe, PROMPTS)
    guided = latent(pipe, PROMPTS, guidance_scale=scale, negative_prompt=NEGATIVES)
    expected = unconditional + scale * (conditional - unconditional)
    assert relative_error(guided, expected) <= 1e-5
    assert relative_error(guided, conditional) > 1e-2  # guidance changed something


def test_guidance_defaults_to_the_empty_prompt_and_takes_embeddings(pipe):
    empty = latent(pipe, ["", ""])
    conditional = latent(pipe, PROMPTS)
    guided = latent(pipe, PROMPTS, guidance_scale=2.0)
    assert relative_error(guided, empty + 2.0 * (conditional - empty)) <= 1e-5
    embeds, negative = pipe.encode_prompt(PROMPTS), pipe.encode_prompt(NEGATIVES)
    from_embeds = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, guidance_scale=2.0,
                       latents=noise(pipe, 2), output_type="latent").images
    from_text = latent(pipe, PROMPTS, guidance_scale=2.0, negative_prompt=NEGATIVES)
    torch.testing.assert_close(from_embeds, from_text, rtol=0, atol=0)


def test_guidance_one_is_the_unguided_pass(pipe):
    torch.testing.assert_close(latent(pipe, PROMPTS, guidance_scale=1.0), latent(pipe, PROMPTS), rtol=0, atol=0)


def test_guided_loop_matches_stable_diffusion_pipeline(pipe):
    """Loop mode's CFG is diffusers' own: the same scheduler, noise and scale give the same z_0."""
    stock = StableDiffusionPipeline(**pipe.components, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    expected = stock(PROMPTS, negative_prompt=NEGATIVES, guidance_scale=4.0, num_inference_steps=4,
                     latents=noise(pipe, 2), output_type="latent").images
    got = latent(pipe, PROMPTS, guidance_scale=4.0, negative_prompt=NEGATIVES, mode="loop")
    assert relative_error(got, expected) <= 1e-5


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(guidance_scale=-1.0), r"guidance_scale: expected a finite number >= 0"),
        (dict(guidance_scale=float("nan")), r"guidance_scale: expected a finite number >= 0"),
        (dict(guidance_scale="high"), r"guidance_scale: expected a number, got str"),
        (dict(guidance_scale=2.0, negative_prompt=["x"]), r"negative_prompt: expected one per prompt \(2\)"),
        (dict(guidance_scale=2.0, negative_prompt=[1, 2]), r"negative_prompt: expected a string or a list"),
        (dict(guidance_scale=2.0, negative_prompt="x", negative_prompt_embeds=torch.zeros(2, 77, 32)),
         r"negative_prompt, negative_prompt_embeds: pass at most one"),
        (dict(guidance_scale=2.0, negative_prompt_embeds=torch.zeros(2, 77, 32)),
         r"negative_prompt_embeds: pass it with prompt_embeds"),
    ],
)
def test_bad_guidance_arguments_name_themselves(pipe, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        pipe(PROMPTS, output_type="latent", **kwargs)


# -- schedulers ----------------------------------------------------------------------------


def test_loop_mode_runs_the_scheduler_the_user_set(pipe):
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    stock = StableDiffusionPipeline(**pipe.components, safety_checker=None, feature_extractor=None,
                                    requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    expected = stock(PROMPTS, guidance_scale=1.0, num_inference_steps=4, latents=noise(pipe, 2),
                     output_type="latent").images
    got = latent(pipe, PROMPTS, mode="loop")
    assert relative_error(got, expected) <= 1e-5


def test_loopfree_pass_stays_ddim_whatever_the_scheduler(pipe):
    ddim = latent(pipe, PROMPTS)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    torch.testing.assert_close(latent(pipe, PROMPTS), ddim, rtol=0, atol=0)


# -- offload and memory switches -----------------------------------------------------------


def _record_offload_hooks(pipe) -> list[str]:
    fired: list[str] = []
    for name in ("text_encoder", "unet", "vae"):
        hook = getattr(pipe, name)._hf_hook
        original = hook.pre_forward

        def recording(module, *args, _name=name, _original=original, **kwargs):
            fired.append(_name)
            return _original(module, *args, **kwargs)

        hook.pre_forward = recording
    return fired


def test_model_cpu_offload_hooks_fire_in_order_in_the_one_pass(pipe):
    expected = pipe(PROMPTS, latents=noise(pipe, 2), output_type="pt").images
    pipe.enable_model_cpu_offload(device="cpu")
    fired = _record_offload_hooks(pipe)
    images = pipe(PROMPTS, latents=noise(pipe, 2), output_type="pt").images
    assert fired == ["text_encoder", "unet", "vae"]
    assert relative_error(images, expected) <= 1e-5
    fired = _record_offload_hooks(pipe)  # each call ends by re-arming offload with fresh hooks
    pipe(PROMPTS, latents=noise(pipe, 2), output_type="pt", mode="loop", num_inference_steps=2)
    assert fired == ["text_encoder", "unet", "unet", "vae"]


def test_offload_and_fast_path_refuse_each_other(pipe):
    pipe.enable_fast_path(compile=False, cuda_graphs=False)
    with pytest.raises(RuntimeError, match="enable_model_cpu_offload: the fast path is enabled"):
        pipe.enable_model_cpu_offload(device="cpu")
    pipe.disable_fast_path()
    pipe.enable_model_cpu_offload(device="cpu")
    with pytest.raises(RuntimeError, match="enable_fast_path: text_encoder, unet, vae carry accelerate offload hooks"):
        pipe.enable_fast_path(compile=False, cuda_graphs=False)


def test_vae_slicing_and_attention_slicing_give_the_same_images(pipe):
    expected = pipe(PROMPTS, latents=noise(pipe, 2), output_type="pt").images
    pipe.enable_vae_slicing()
    pipe.enable_attention_slicing(1)
    got = pipe(PROMPTS, latents=noise(pipe, 2), output_type="pt").images
    assert relative_error(got, expected) <= 1e-5


def test_vae_tiling_decodes_through_tiles(pipe, monkeypatch):
    calls = []
    original = pipe.vae.tiled_decode
    monkeypatch.setattr(pipe.vae, "tiled_decode", lambda *a, **k: calls.append(1) or original(*a, **k))
    pipe.enable_vae_tiling()
    pipe.vae.tile_latent_min_size = pipe.unet.config.sample_size // 2  # tiny model: force tiles
    pipe.vae.tile_sample_min_size = pipe.vae.tile_latent_min_size * pipe.vae_scale_factor
    images = pipe(PROMPTS, latents=noise(pipe, 2), output_type="pt").images
    assert calls and torch.isfinite(images).all()


# -- saved folders -------------------------------------------------------------------------


def test_saved_folder_names_tiue_and_is_refused_by_generic_diffusers(pipe, tmp_path):
    folder = tmp_path / "student"
    pipe.save_pretrained(folder)
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "TiUEPipeline"
    with pytest.raises(Exception, match="TiUEPipeline"):  # never a silent 50-step PNDM run
        DiffusionPipeline.from_pretrained(folder)
    again = TiUEPipeline.from_pretrained(folder)
    again.set_progress_bar_config(disable=True)
    torch.testing.assert_close(latent(again, PROMPTS), latent(pipe, PROMPTS), rtol=0, atol=0)
    stock = StableDiffusionPipeline.from_pretrained(folder)  # the components still load
    torch.testing.assert_close(stock.unet.state_dict(), pipe.unet.state_dict(), rtol=0, atol=0)


def test_saved_folder_carries_a_model_card(pipe, tmp_path):
    folder = tmp_path / "student"
    pipe.save_pretrained(folder)
    card = (folder / "README.md").read_text()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: diffusers" in front and "- tiue" in front and "pipeline_tag: text-to-image" in front
    assert 'tiue.TiUEPipeline.from_pretrained("student")' in body
    assert SAFETY_NOTE in body and "guidance_scale=1" in body


def test_model_card_lists_the_training_settings():
    training = {"step": 2700, "config": {"teacher": "org/sd", "num_steps": 4, "lambda_kl": 0.1, "seed": 0}}
    card = model_card(name="runs/x/final", base_model="org/sd", num_steps=4, training=training)
    assert 'base_model: "org/sd"' in card
    assert "| lambda_kl | 0.1 |" in card and "| steps trained | 2700 |" in card and "K = 4" in card


def test_sample_warns_on_a_plain_stable_diffusion_folder(pipe, tiny_pipeline_dir, tmp_path, capsys):
    from tiue.cli import main

    args = ["sample", "--prompt", "a cat", "--steps", "2"]
    assert main([*args, "--model", str(tiny_pipeline_dir), "--out", str(tmp_path / "plain")]) == 0
    assert "the loop-free pass needs a TiUE-distilled student" in capsys.readouterr().err
    pipe.save_pretrained(tmp_path / "student")
    assert main([*args, "--model", str(tmp_path / "student"), "--out", str(tmp_path / "saved")]) == 0
    assert "TiUE-distilled student" not in capsys.readouterr().err
    assert main([*args, "--model", str(tiny_pipeline_dir), "--mode", "loop", "--out", str(tmp_path / "loop")]) == 0
    assert "TiUE-distilled student" not in capsys.readouterr().err


def test_sample_command_guides_when_asked(tiny_pipeline_dir, tmp_path, capsys):
    from PIL import Image

    from tiue.cli import main

    args = ["sample", "--model", str(tiny_pipeline_dir), "--prompt", "a cat", "--steps", "2"]
    assert main([*args, "--out", str(tmp_path / "plain")]) == 0
    assert main([*args, "--guidance-scale", "5", "--negative-prompt", "a dog", "--out", str(tmp_path / "guided")]) == 0
    plain, guided = (np.asarray(Image.open(tmp_path / d / "00000-seed0.png")) for d in ("plain", "guided"))
    assert not np.array_equal(plain, guided)
    assert main([*args, "--guidance-scale", "-2", "--out", str(tmp_path / "bad")]) == 1
    assert "--guidance-scale: expected a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
