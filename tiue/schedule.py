"""Loop-free coefficients: the whole deterministic DDIM chain as one linear combination.

A DDIM step with eta = 0 is linear in (z_t, model_output): z_prev = a_t * z_t + b_t * out_t
(paper, appendix eq. 7-11 for epsilon prediction). Composing the K steps gives
z_0 = c_0 * z_K + sum_k c_{k+1} * out_k with K+1 scalars that depend only on the scheduler
and K, so the K decoder outputs can be combined in one pass instead of a Python loop.
"""

from __future__ import annotations

import copy
import math
import warnings
from typing import NamedTuple

import torch
from diffusers import DDIMScheduler

__all__ = ["SD21_SCHEDULER_CONFIG", "TIMESTEP_SPACINGS", "ddim_timesteps", "loopfree_coefficients", "ddim_chain", "DDIMStep", "ddim_step_coefficients", "as_ddim_scheduler", "warn_if_encoder_far_from_noise"]

_LINEAR_PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# diffusers' DDIM timestep spacings: "leading" (SD's configs), "trailing" (K = 1 at t = 999), "linspace".
TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# The scheduler config Stable Diffusion 2.1-base ships (a PNDMScheduler config): the shapes
# world's teacher trains and samples under it, and the tests' tiny models use it.
SD21_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    num_train_timesteps=1000,
    prediction_type="epsilon",
    set_alpha_to_one=False,
    skip_prk_steps=True,
    steps_offset=1,
    trained_betas=None,
)


def as_ddim_scheduler(scheduler) -> DDIMScheduler:
    """A DDIMScheduler built from `scheduler`'s config, whatever its class (as the paper's code
    does: SD2.1-base ships a PNDMScheduler config and is sampled with DDIM)."""
    if isinstance(scheduler, DDIMScheduler):
        return scheduler
    return DDIMScheduler.from_config(scheduler.config)


def _check_linear(scheduler, eta: float) -> None:
    if not isinstance(scheduler, DDIMScheduler):
        raise ValueError(
            f"scheduler: loop-free sampling needs a deterministic linear scheduler (DDIMScheduler), "
            f"got {type(scheduler).__name__}; build one with "
            f"DDIMScheduler.from_config(scheduler.config)"
        )
    config = scheduler.config
    if eta != 0:
        raise ValueError(f"eta: loop-free sampling needs deterministic DDIM (eta=0), got eta={eta}")
    if config.clip_sample:
        raise ValueError(
            "scheduler: clip_sample=True makes the DDIM chain non-linear; loop-free sampling needs "
            "clip_sample=False (set it with DDIMScheduler.from_config(config, clip_sample=False))"
        )
    if config.thresholding:
        raise ValueError(
            "scheduler: thresholding=True makes the DDIM chain non-linear; loop-free sampling needs "
            "thresholding=False"
        )
    if config.prediction_type not in _LINEAR_PREDICTION_TYPES:
        raise ValueError(
            f"scheduler: prediction_type={config.prediction_type!r} is not supported; accepted: "
            f"{', '.join(_LINEAR_PREDICTION_TYPES)}"
        )


def ddim_step_coefficients(
    alpha_prod_t: float, alpha_prod_prev: float, prediction_type: str
) -> tuple[float, float]:
    """(a, b) with z_prev = a * z_t + b * model_output for one DDIM step, eta = 0."""
    sqrt_t, sqrt_prev = math.sqrt(alpha_prod_t), math.sqrt(alpha_prod_prev)
    sigma_t, sigma_prev = math.sqrt(1.0 - alpha_prod_t), math.sqrt(1.0 - alpha_prod_prev)
    if prediction_type == "epsilon":
        # x0 = (z - sigma_t eps) / sqrt_t; z_prev = sqrt_prev x0 + sigma_prev eps (paper eq. 7-10)
        return sqrt_prev / sqrt_t, sigma_prev - sqrt_prev * sigma_t / sqrt_t
    if prediction_type == "v_prediction":
        # x0 = sqrt_t z - sigma_t v; eps = sqrt_t v + sigma_t z
        return sqrt_prev * sqrt_t + sigma_prev * sigma_t, sigma_prev * sqrt_t - sqrt_prev * sigma_t
    if prediction_type == "sample":
        # x0 = out; eps = (z - sqrt_t x0) / sigma_t
        return sigma_prev / sigma_t, sqrt_prev - sigma_prev * sqrt_t / sigma_t
    raise ValueError(
        f"prediction_type: expected one of {', '.join(_LINEAR_PREDICTION_TYPES)}, got {prediction_type!r}"
    )


def ddim_timesteps(scheduler, num_inference_steps: int) -> torch.Tensor:
    """The K timesteps `scheduler` runs for K steps (a copy is configured, not `scheduler`),
    checked to lie within its training timesteps: "leading" spacing with steps_offset 1
    passes the end at K = 1000."""
    num_train = scheduler.config.num_train_timesteps
    scheduler = copy.deepcopy(scheduler)
    scheduler.set_timesteps(num_inference_steps)
    timesteps = scheduler.timesteps.to(torch.int64).cpu()
    if int(timesteps.max()) >= num_train:
        raise ValueError(
            f"num_inference_steps: {num_inference_steps} steps with this scheduler ({scheduler.config.timestep_spacing!r} "
            f"spacing, steps_offset {scheduler.config.steps_offset}) reach timestep {int(timesteps.max())}, past its "
            f"last training timestep {num_train - 1}; use fewer steps or timestep_spacing 'trailing'"
        )
    return timesteps


# The one pass starts from pure noise z_K; an encoder timestep whose alphabar is above this
# treats that noise as a mostly clean latent (e.g. K = 1 with "leading" spacing runs at t = 1).
FAR_FROM_NOISE_ALPHABAR = 0.5


def warn_if_encoder_far_from_noise(scheduler, first_timestep: int, num_inference_steps: int) -> None:
    alphabar = float(scheduler.alphas_cumprod[first_timestep])
    if alphabar > FAR_FROM_NOISE_ALPHABAR:
        warnings.warn(
            f"num_inference_steps: with {scheduler.config.timestep_spacing!r} spacing, K = {num_inference_steps} "
            f"starts at timestep {first_timestep} (alphabar {alphabar:.2f}), far from the pure noise the sampler "
            "starts from; one-step and few-step students usually use timestep_spacing 'trailing' (first step at "
            "the last training timestep)",
            stacklevel=3,
        )


def loopfree_coefficients(
    scheduler, num_inference_steps: int, eta: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps and the K+1 coefficients of the loop-free DDIM chain.

    Args:
        scheduler: a DDIMScheduler (not modified; a copy is configured for K steps).
        num_inference_steps: K, the number of decoder steps.
        eta: must be 0; accepted only to reject stochastic DDIM clearly.

    Returns:
        (timesteps, coeffs): timesteps (K,) int64 in scheduler order, and float64 coeffs (K+1,)
        with z_0 = coeffs[0] * z_K + sum_k coeffs[k+1] * out_k (paper eq. 11 generalised to
        any K and to v / sample prediction).
    """
    _check_linear(scheduler, eta)
    num_train = scheduler.config.num_train_timesteps
    if not isinstance(num_inference_steps, int) or isinstance(num_inference_steps, bool):
        raise ValueError(f"num_inference_steps: expected an int, got {num_inference_steps!r}")
    if not 1 <= num_inference_steps <= num_train:
        raise ValueError(
            f"num_inference_steps: expected 1 <= K <= {num_train} (the scheduler's training steps), "
            f"got {num_inference_steps}"
        )
    timesteps, steps = ddim_chain(scheduler, num_inference_steps)
    warn_if_encoder_far_from_noise(scheduler, int(timesteps[0]), num_inference_steps)

    # z_0 = (prod_k a_k) z_K + sum_k b_k (prod_{j>k} a_j) out_k
    coeffs = [0.0] * (num_inference_steps + 1)
    tail = 1.0
    for k in range(num_inference_steps - 1, -1, -1):
        a_k, b_k, _ = steps[k]
        coeffs[k + 1] = b_k * tail
        tail *= a_k
    coeffs[0] = tail
    return timesteps, torch.tensor(coeffs, dtype=torch.float64)


class DDIMStep(NamedTuple):
    """One deterministic DDIM step from timestep t: z_next = a * z_t + b * out_t."""

    a: float
    b: float
    alphabar: float  # alphabar_t, where the step's model output is made


def ddim_chain(scheduler, num_inference_steps: int) -> tuple[torch.Tensor, list[DDIMStep]]:
    """Timesteps (K,) and each step of the chain, in scheduler order."""
    timesteps = ddim_timesteps(scheduler, num_inference_steps)
    num_train = scheduler.config.num_train_timesteps
    alphas = scheduler.alphas_cumprod.double()
    final_alpha = float(scheduler.final_alpha_cumprod)
    # DDIMScheduler.step goes from t to t - num_train // K, whatever the spacing.
    stride = num_train // num_inference_steps
    prediction_type = scheduler.config.prediction_type

    steps = []
    for t in timesteps.tolist():
        prev = t - stride
        alpha_prev = float(alphas[prev]) if prev >= 0 else final_alpha
        steps.append(DDIMStep(*ddim_step_coefficients(float(alphas[t]), alpha_prev, prediction_type), float(alphas[t])))
    return timesteps, steps
