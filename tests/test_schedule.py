import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, EulerAncestralDiscreteScheduler

from tiue import loopfree_coefficients
from tiue.schedule import as_ddim_scheduler
from tiue.testing.tiny import SD21_SCHEDULER_CONFIG


def ddim(**overrides) -> DDIMScheduler:
    return DDIMScheduler.from_config(dict(SD21_SCHEDULER_CONFIG, **overrides))


def chain_with_scheduler_step(scheduler, z_k, outputs):
    """z_0 from running diffusers' own scheduler.step K times (the reference)."""
    scheduler = DDIMScheduler.from_config(scheduler.config)
    # Alphas in float64, so that the chain is computed at the precision of the coefficients.
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.double()
    scheduler.final_alpha_cumprod = torch.as_tensor(scheduler.final_alpha_cumprod).double()
    scheduler.set_timesteps(len(outputs))
    z = z_k
    for t, out in zip(scheduler.timesteps, outputs):
        z = scheduler.step(out, t, z, eta=0.0).prev_sample
    return z


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 2, 4, 8, 50])
def test_coefficients_equal_scheduler_step_chain(prediction_type, spacing, num_steps):
    scheduler = ddim(prediction_type=prediction_type, timestep_spacing=spacing)
    timesteps, coeffs = loopfree_coefficients(scheduler, num_steps)
    assert coeffs.dtype == torch.float64 and coeffs.shape == (num_steps + 1,)
    reference = DDIMScheduler.from_config(scheduler.config)
    reference.set_timesteps(num_steps)
    assert torch.equal(timesteps, reference.timesteps.to(torch.int64))

    generator = torch.Generator().manual_seed(num_steps)
    z_k = torch.randn(2, 4, 3, 5, generator=generator, dtype=torch.float64)
    outputs = torch.randn(num_steps, 2, 4, 3, 5, generator=generator, dtype=torch.float64)
    expected = chain_with_scheduler_step(scheduler, z_k, outputs)
    combined = coeffs[0] * z_k + (coeffs[1:].view(-1, 1, 1, 1, 1) * outputs).sum(0)
    torch.testing.assert_close(combined, expected, rtol=1e-10, atol=1e-10)


def test_sd21_base_timesteps_from_pndm_config():
    from diffusers import PNDMScheduler

    scheduler = as_ddim_scheduler(PNDMScheduler.from_config(SD21_SCHEDULER_CONFIG))
    assert isinstance(scheduler, DDIMScheduler)
    timesteps, _ = loopfree_coefficients(scheduler, 4)
    assert timesteps.tolist() == [751, 501, 251, 1]


def test_single_step_epsilon_coefficients_match_x0_formula():
    # K = 1 from t = 1 with set_alpha_to_one: z_0 = x0 = (z - sqrt(1-a) eps) / sqrt(a).
    scheduler = ddim(set_alpha_to_one=True, steps_offset=0, timestep_spacing="trailing")
    timesteps, coeffs = loopfree_coefficients(scheduler, 1)
    alpha = scheduler.alphas_cumprod[timesteps[0]].double()
    torch.testing.assert_close(coeffs, torch.stack([1 / alpha.sqrt(), -(1 - alpha).sqrt() / alpha.sqrt()]))


def test_scheduler_is_not_modified():
    scheduler = ddim()
    scheduler.set_timesteps(10)
    loopfree_coefficients(scheduler, 4)
    assert len(scheduler.timesteps) == 10


@pytest.mark.parametrize(
    "scheduler, match",
    [
        (ddim(clip_sample=True), "clip_sample"),
        (ddim(thresholding=True), "thresholding"),
        (DDPMScheduler.from_config(SD21_SCHEDULER_CONFIG), "DDPMScheduler"),
        (EulerAncestralDiscreteScheduler.from_config(SD21_SCHEDULER_CONFIG), "EulerAncestral"),
    ],
)
def test_non_linear_settings_are_rejected(scheduler, match):
    with pytest.raises(ValueError, match=match):
        loopfree_coefficients(scheduler, 4)


def test_eta_and_step_count_are_checked():
    with pytest.raises(ValueError, match="eta"):
        loopfree_coefficients(ddim(), 4, eta=0.5)
    for bad in (0, 1001, -3):
        with pytest.raises(ValueError, match="num_inference_steps"):
            loopfree_coefficients(ddim(), bad)
    with pytest.raises(ValueError, match="num_inference_steps"):
        loopfree_coefficients(ddim(), 2.0)
