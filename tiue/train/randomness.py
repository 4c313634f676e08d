"""The random draws of one training step, each sample's drawn from its own seed.

A sample's seed depends only on (run seed, micro-step, the sample's index in the global
batch). So the draws do not depend on how the global batch is split across processes (one
process with batch 2B draws what two processes with batch B draw together), and a resumed
run draws what the uninterrupted run would have drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["StepDraws", "draw_step"]


@dataclass
class StepDraws:
    """For B samples: the student's initial noise z_K; the VSD timestep and noise; the LoRA
    step's timestep, noise and whether its prompt is replaced by the null prompt."""

    initial_noise: torch.Tensor  # (B, C, h, w)
    vsd_timesteps: torch.Tensor  # (B,) int64 in [vsd_min, vsd_max]
    vsd_noise: torch.Tensor
    lora_timesteps: torch.Tensor  # (B,) int64 in [0, num_train_timesteps - 1]
    lora_noise: torch.Tensor
    lora_null_prompt: torch.Tensor  # (B,) bool

    def to(self, device: torch.device) -> "StepDraws":
        return StepDraws(**{k: v.to(device) for k, v in vars(self).items()})


def sample_generator(seed: int, micro_step: int, sample_index: int, stream: int = 0) -> torch.Generator:
    sequence = np.random.SeedSequence([seed, micro_step, sample_index], spawn_key=(stream,) if stream else ())
    state = sequence.generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# The stream of draws made once per global batch (not per sample), so every process agrees.
_BATCH_STREAM = 1


def draw_step(
    *,
    seed: int,
    micro_step: int,
    first_sample: int,
    batch_size: int,
    latent_shape: tuple[int, int, int],
    vsd_timestep_range: tuple[int, int],
    num_train_timesteps: int,
    null_prompt_probability: float,
    null_prompt_scope: str = "batch",
) -> StepDraws:
    """Draws for samples first_sample .. first_sample + batch_size - 1 of the global batch (on CPU).

    null_prompt_scope "batch": the LoRA loss drops the prompts of the whole global batch with
    probability null_prompt_probability (one draw per micro-step, as the official script);
    "sample": each sample's prompt is dropped on its own draw.
    """
    rows = []
    for index in range(first_sample, first_sample + batch_size):
        g = sample_generator(seed, micro_step, index)
        rows.append(
            (
                torch.randn(latent_shape, generator=g),
                torch.randint(vsd_timestep_range[0], vsd_timestep_range[1] + 1, (), generator=g),
                torch.randn(latent_shape, generator=g),
                torch.randint(0, num_train_timesteps, (), generator=g),
                torch.randn(latent_shape, generator=g),
                torch.rand((), generator=g) < null_prompt_probability,
            )
        )
    columns = [torch.stack(column) for column in zip(*rows)]
    if null_prompt_scope == "batch":
        g = sample_generator(seed, micro_step, 0, stream=_BATCH_STREAM)
        columns[-1] = (torch.rand((), generator=g) < null_prompt_probability).expand(batch_size).clone()
    elif null_prompt_scope != "sample":
        raise ValueError(f"null_prompt_scope: expected batch or sample, got {null_prompt_scope!r}")
    return StepDraws(*columns)
