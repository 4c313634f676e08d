import numpy as np
import pytest

from tiue.eval.analysis import adjacent_step_similarity, decoder_outputs, gaussian_fit_summary


def test_gaussian_summary_of_standard_normal_values():
    values = np.random.default_rng(0).normal(size=(4, 8, 4, 8, 8))
    summary = gaussian_fit_summary(values)
    assert summary["mean"] == pytest.approx(0, abs=0.03) and summary["std"] == pytest.approx(1, abs=0.03)
    assert abs(summary["excess_kurtosis"]) < 0.15 and summary["kl_per_sample"] < 0.01
    assert gaussian_fit_summary(values * 3)["kl_per_sample"] > 1.0


def test_decoder_outputs_and_feature_similarity_on_a_tiny_pipeline(tiny_pipeline_dir):
    from tiue.pipeline import TiUEPipeline

    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    values = decoder_outputs(pipe, ["a red circle", "a blue square"], num_steps=3)
    assert values.shape == (3, 2, 4, 8, 8)
    result = adjacent_step_similarity(pipe, ["a red circle"], num_steps=5)
    assert result["timesteps"].shape == (5,) and result["encoder"].shape == (4,) and result["decoder"].shape == (4,)
    assert np.all(np.abs(result["encoder"]) <= 1 + 1e-6)


def test_decoder_noise_predictions_of_a_v_prediction_pipeline_follow_the_loop(tiny_pipeline_dir):
    import torch
    from diffusers import DDIMScheduler

    from tiue.pipeline import TiUEPipeline

    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    prompts = ["a red circle", "a blue square"]
    outputs = decoder_outputs(pipe, prompts, num_steps=3)
    epsilons = decoder_outputs(pipe, prompts, num_steps=3, noise_predictions=True)
    # Reference: diffusers' DDIM loop driven by the same outputs; eps = (z_t - sqrt(ab) x0) / sqrt(1 - ab).
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generators = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
    z = pipe.prepare_latents(len(prompts), size, size, torch.float32, pipe.device, generators).double()
    loop = DDIMScheduler.from_config(pipe.scheduler.config)
    loop.set_timesteps(3)
    for k, t in enumerate(loop.timesteps):
        alphabar = loop.alphas_cumprod[t].double()
        stepped = loop.step(torch.from_numpy(outputs[k]), t, z, eta=0.0)
        expected = (z - alphabar.sqrt() * stepped.pred_original_sample) / (1 - alphabar).sqrt()
        np.testing.assert_allclose(epsilons[k], expected.numpy(), rtol=1e-4, atol=1e-4)
        z = stepped.prev_sample
    assert not np.allclose(epsilons, outputs, atol=1e-2)
