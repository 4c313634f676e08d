"""Two diagnostics of the paper, computed with TiUEUNet's encoder/decoder split.

decoder_outputs (paper Fig. 8 right): the values a TiUE student's K decoders output in one
pass; with the KL term they should look like N(0, 1) noise predictions.

adjacent_step_similarity (paper Fig. 1c): along the teacher's own DDIM trajectory, the cosine
similarity between the encoder's output (mid block) at adjacent timesteps, and the same for
the decoder's last up block. The paper's premise is that encoder features change little from
step to step while decoder features change more.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler

from tiue.unet import TiUEUNet

__all__ = ["decoder_outputs", "adjacent_step_similarity", "gaussian_fit_summary"]


@torch.no_grad()
def decoder_outputs(pipe, prompts: list[str], num_steps: int, seed: int = 0, noise_predictions: bool = False) -> np.ndarray:
    """(K, B, C, h, w) decoder outputs of one loop-free pass, as float64 numpy; with
    `noise_predictions`, each as the noise it predicts (what `--kl-target epsilon` regularises;
    the same values for an epsilon-prediction model)."""
    from tiue.schedule import as_ddim_scheduler, ddim_chain
    from tiue.train.losses import decoder_epsilons

    embeds = pipe.encode_prompt(prompts)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generators = [torch.Generator(pipe.device).manual_seed(seed + i) for i in range(len(prompts))]
    latents = pipe.prepare_latents(len(prompts), size, size, embeds.dtype, pipe.device, generators)
    timesteps, _ = pipe.loopfree_schedule(num_steps)
    outputs = TiUEUNet(pipe.unet, shared_text_attention=False)(latents, timesteps, embeds)
    if noise_predictions:
        scheduler = as_ddim_scheduler(pipe.scheduler)
        _, chain = ddim_chain(scheduler, num_steps)
        outputs = decoder_epsilons(latents, outputs, chain, scheduler.config.prediction_type)
    return outputs.double().cpu().numpy()


def gaussian_fit_summary(values: np.ndarray) -> dict[str, float]:
    """Mean, std, excess kurtosis of all values, and the mean per-sample KL to N(0, 1) as the
    trainer's KL term measures it (each decoder output of each sample is one sample)."""
    flat = values.reshape(-1)
    per_sample = values.reshape(values.shape[0] * values.shape[1], -1)
    mu, var = per_sample.mean(1), per_sample.var(1, ddof=1)
    kl = -0.5 * (1 + np.log(var) - mu**2 - var)
    centred = flat - flat.mean()
    return {
        "mean": float(flat.mean()),
        "std": float(flat.std()),
        "excess_kurtosis": float((centred**4).mean() / centred.var() ** 2 - 3.0),
        "kl_per_sample": float(kl.mean()),
    }


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1).mean())


@torch.no_grad()
def adjacent_step_similarity(pipe, prompts: list[str], num_steps: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """Along the conditional DDIM trajectory: {'timesteps': (T,), 'encoder': (T-1,), 'decoder': (T-1,)}."""
    split = TiUEUNet(pipe.unet, shared_text_attention=False)
    embeds = pipe.encode_prompt(prompts)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    generators = [torch.Generator(pipe.device).manual_seed(seed + i) for i in range(len(prompts))]
    latents = pipe.prepare_latents(len(prompts), size, size, embeds.dtype, pipe.device, generators)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(num_steps, device=latents.device)
    captured = {}
    hook = pipe.unet.up_blocks[-1].register_forward_hook(lambda m, i, out: captured.__setitem__("decoder", out))
    encoder_features, decoder_features = [], []
    try:
        for t in scheduler.timesteps:
            features = split.encode(latents, t, embeds)
            eps = split.decode(features, t.reshape(1), embeds)[0]
            encoder_features.append(features.mid.clone())
            decoder_features.append(captured["decoder"].clone())
            latents = scheduler.step(eps, t, latents, eta=0.0, return_dict=False)[0]
    finally:
        hook.remove()
    pairs = range(len(encoder_features) - 1)
    return {
        "timesteps": scheduler.timesteps.cpu().numpy(),
        "encoder": np.array([_cosine(encoder_features[i], encoder_features[i + 1]) for i in pairs]),
        "decoder": np.array([_cosine(decoder_features[i], decoder_features[i + 1]) for i in pairs]),
    }
