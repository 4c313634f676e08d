"""The served model: a loaded pipeline, what it accepts (ModelBounds) and the one function the
batcher calls."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from tiue.serve.requests import ModelBounds

__all__ = ["ServedModel"]


@dataclass
class ServedModel:
    """A pipeline, its name and its guidance scale (1: none), as `tiue serve` loaded it."""

    name: str
    pipe: object
    guidance_scale: float = 1.0

    @classmethod
    def load(cls, model: str, device: str | None = None, dtype: str | None = None, fast: bool = False,
             guidance_scale: float = 1.0) -> "ServedModel":
        from tiue.sampling import load_pipeline

        return cls(model, load_pipeline(model, device, dtype, fast), guidance_scale)

    def bounds(self) -> ModelBounds:
        from tiue.schedule import ddim_timesteps

        def steps_error(steps: int) -> str | None:
            try:
                ddim_timesteps(self.pipe.scheduler, steps)
            except ValueError as error:
                return str(error).removeprefix("num_inference_steps: ")
            return None

        pipe = self.pipe
        return ModelBounds(
            default_size=pipe.unet.config.sample_size * pipe.vae_scale_factor,
            size_multiple=pipe.vae_scale_factor,
            guided=self.guidance_scale > 1,
            steps_error=steps_error,
        )

    def sample(self, prompts: Sequence[str], negative_prompts: Sequence[str], seeds: Sequence[int], steps: int,
               height: int, width: int) -> list:
        """One pass over `prompts`, image i from its own generator seeded `seeds[i]`: the noise
        `tiue sample` draws for that prompt and seed, whichever images share the pass. With
        guidance, image i is steered away from `negative_prompts[i]` ("" is the empty prompt)."""
        generators = [torch.Generator(self.pipe.device).manual_seed(seed) for seed in seeds]
        guided = self.guidance_scale > 1
        return self.pipe(list(prompts), num_inference_steps=steps, height=height, width=width, generator=generators,
                         guidance_scale=self.guidance_scale,
                         negative_prompt=list(negative_prompts) if guided else None).images
