"""The loss terms of TiUE distillation (docs/training.md), as pure functions of tensors.

Predictions of v-prediction teachers are converted to epsilon before they enter a loss
(`to_epsilon`), so every formula below is the paper's epsilon-space formula whatever the
teacher predicts; `teacher_objective_loss` alone, an option for the fake score, stays in the
teacher's own parameterisation. The student's own decoder outputs stay in the teacher's parameterisation
(the loop-free coefficients handle epsilon, v and sample prediction alike), and the KL term
applies to those raw outputs, as the public code applies it to the UNet's output.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tiue import ops
from tiue.schedule import DDIMStep

__all__ = [
    "loopfree_latent",
    "kl_loss",
    "classifier_free_guidance",
    "to_epsilon",
    "vsd_gradient",
    "vsd_loss",
    "lora_loss",
    "teacher_objective_loss",
    "per_sample",
    "decoder_epsilons",
]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, ...) to broadcast against `like`."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def loopfree_latent(initial_noise: torch.Tensor, decoder_outputs: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """z_0 = c_0 z_K + sum_k c_{k+1} out_k (paper eq. 11), differentiable, in fp32.

    decoder_outputs: (K, B, C, h, w); coeffs: (K+1,) on the CPU. The sampler's fused op,
    whose backward is registered, so training and sampling share one combination.
    """
    return ops.ddim_combine(initial_noise, decoder_outputs, coeffs, out_dtype=torch.float32)


def kl_loss(decoder_outputs: torch.Tensor, lambda_kl: float) -> torch.Tensor:
    """lambda_kl * sum over the K*B decoder outputs of KL(N(mean, unbiased var) || N(0, 1))."""
    flat = decoder_outputs.reshape(-1, *decoder_outputs.shape[2:])
    return lambda_kl * ops.gaussian_kl(flat).sum()


def decoder_epsilons(
    initial_noise: torch.Tensor, decoder_outputs: torch.Tensor, chain: list[DDIMStep], prediction_type: str
) -> torch.Tensor:
    """The K decoder outputs as noise predictions: out_k converted at the chain's own z_k.

    z_0 = z_K and z_{k+1} = a_k z_k + b_k out_k (`tiue.schedule.ddim_chain`), so the noise each
    decoder predicts is known without running the loop.
    """
    if prediction_type == "epsilon":
        return decoder_outputs
    state, epsilons = initial_noise.float(), []
    for output, step in zip(decoder_outputs.float().unbind(0), chain):
        epsilons.append(to_epsilon(output, state, output.new_full(output.shape[:1], step.alphabar), prediction_type))
        state = step.a * state + step.b * output
    return torch.stack(epsilons)


def classifier_free_guidance(conditional: torch.Tensor, unconditional: torch.Tensor, scale: float) -> torch.Tensor:
    return unconditional + scale * (conditional - unconditional)


def to_epsilon(
    model_output: torch.Tensor, noisy: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """A teacher's output as an epsilon prediction, given x_t and alphabar_t per sample.

    v-prediction: eps = sqrt(alphabar) v + sqrt(1 - alphabar) x_t (linear, so applying CFG
    before or after the conversion gives the same epsilon).
    """
    if prediction_type == "epsilon":
        return model_output
    alpha = per_sample(alphas_cumprod, noisy)
    if prediction_type == "v_prediction":
        return alpha.sqrt() * model_output + (1 - alpha).sqrt() * noisy
    if prediction_type == "sample":
        return (noisy - alpha.sqrt() * model_output) / (1 - alpha).sqrt()
    raise ValueError(
        f"prediction_type: expected epsilon, v_prediction or sample, got {prediction_type!r}"
    )


def vsd_gradient(eps_teacher: torch.Tensor, eps_lora: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """nan_to_num(sigma_t^2 * (eps_teacher - eps_lora)), sigma_t^2 = 1 - alphabar_t."""
    sigma_squared = per_sample(1 - alphas_cumprod, eps_teacher)
    return torch.nan_to_num(sigma_squared * (eps_teacher - eps_lora))


def vsd_loss(
    x0: torch.Tensor, eps_teacher: torch.Tensor, eps_lora: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """0.5 * mse(x0, stopgrad(x0 - grad)): its gradient on x0 is grad / x0.numel()."""
    grad = vsd_gradient(eps_teacher.float(), eps_lora.float(), alphas_cumprod.float())
    target = (x0 - grad).detach()
    return 0.5 * F.mse_loss(x0.float(), target, reduction="mean")


def lora_loss(eps_lora: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """mse(sqrt(alphabar_t) * eps_lora, sqrt(alphabar_t) * noise)."""
    weight = per_sample(alphas_cumprod.float(), noise).sqrt()
    return F.mse_loss(weight * eps_lora.float(), weight * noise.float(), reduction="mean")


def teacher_objective_loss(
    model_output: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor,
    prediction_type: str,
) -> torch.Tensor:
    """The teacher's own denoising objective, unweighted: mse of the raw output against the
    noise (epsilon), v = sqrt(alphabar) noise - sqrt(1 - alphabar) x0 (v_prediction) or x0.

    Against `lora_loss`'s alphabar weighting (alphabar^2 in v terms), a v-prediction fake score
    trained this way keeps learning at high noise, where a zero-terminal-SNR schedule's alphabar
    reaches 0 and the weighted loss stops teaching it anything.
    """
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        alpha = per_sample(alphas_cumprod.float(), noise)
        target = alpha.sqrt() * noise.float() - (1 - alpha).sqrt() * x0.float()
    elif prediction_type == "sample":
        target = x0
    else:
        raise ValueError(f"prediction_type: expected epsilon, v_prediction or sample, got {prediction_type!r}")
    return F.mse_loss(model_output.float(), target.float(), reduction="mean")
