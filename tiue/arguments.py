"""Checks of the pipeline's call arguments: each error names the argument, the value and what is accepted."""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "check_call_arguments", "check_choice", "check_guidance", "check_positive_int", "check_prompt_list", "check_seed",
]

# torch.Generator.manual_seed's inclusive range
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def check_choice(name: str, value, choices: Sequence) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_positive_int(name: str, value, maximum: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    if value < 1 or (maximum is not None and value > maximum):
        bound = f"1 <= {name} <= {maximum}" if maximum is not None else f"{name} >= 1"
        raise ValueError(f"{name}: expected {bound}, got {value}")


def check_prompt_list(name: str, prompt) -> list[str]:
    """A prompt or a non-empty list of prompts, as a list."""
    if isinstance(prompt, str):
        return [prompt]
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
        raise TypeError(f"{name}: expected a string or a list of strings, got {prompt!r:.80}")
    if len(prompt) == 0:
        raise ValueError(f"{name}: got an empty list; pass at least one prompt")
    return list(prompt)


def check_seed(name: str, seed) -> int:
    """An int that torch.Generator.manual_seed takes (a string or a float is refused, not parsed)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"{name}: expected an int, got {type(seed).__name__} {seed!r:.80}")
    if not SEED_MIN <= seed <= SEED_MAX:
        raise ValueError(f"{name}: expected -2**63 <= {name} <= 2**64 - 1 (torch's seeds), got {seed}")
    return seed


def _prompt_count(prompt, prompt_embeds, text_width: int | None = None) -> int:
    if (prompt is None) == (prompt_embeds is None):
        given = "both" if prompt is not None else "neither"
        raise ValueError(f"prompt, prompt_embeds: pass exactly one of them, got {given}")
    if prompt_embeds is not None:
        if not isinstance(prompt_embeds, torch.Tensor) or prompt_embeds.dim() != 3:
            shape = tuple(prompt_embeds.shape) if isinstance(prompt_embeds, torch.Tensor) else type(prompt_embeds).__name__
            raise ValueError(f"prompt_embeds: expected a (B, L, D) tensor, got {shape}")
        if prompt_embeds.shape[0] == 0:
            raise ValueError("prompt_embeds: got an empty batch (B = 0)")
        if text_width is not None and prompt_embeds.shape[-1] != text_width:
            raise ValueError(
                f"prompt_embeds: expected width D = {text_width} (the UNet's cross_attention_dim), "
                f"got shape {tuple(prompt_embeds.shape)}"
            )
        if prompt_embeds.device.type == "meta" or not prompt_embeds.is_floating_point():
            raise ValueError(f"prompt_embeds: expected a floating-point tensor with data, got {prompt_embeds.dtype} on {prompt_embeds.device}")
        return prompt_embeds.shape[0]
    if isinstance(prompt, str):
        return 1
    if not isinstance(prompt, (list, tuple)) or not all(isinstance(p, str) for p in prompt):
        raise TypeError(f"prompt: expected a string or a list of strings, got {prompt!r:.80}")
    if len(prompt) == 0:
        raise ValueError("prompt: got an empty list; pass at least one prompt")
    return len(prompt)


def check_call_arguments(
    *,
    prompt,
    prompt_embeds,
    num_inference_steps,
    max_steps: int,
    height,
    width,
    size_multiple: int,
    num_images_per_prompt,
    generator,
    latents,
    latent_channels: int,
    output_type,
    text_width: int | None = None,
    output_types: Sequence[str],
    mode,
    modes: Sequence[str],
) -> int:
    """Validate a pipeline call; returns the number of images to generate."""
    check_choice("mode", mode, modes)
    check_choice("output_type", output_type, output_types)
    check_positive_int("num_inference_steps", num_inference_steps, max_steps)
    check_positive_int("num_images_per_prompt", num_images_per_prompt)
    for name, value in (("height", height), ("width", width)):
        check_positive_int(name, value)
        if value % size_multiple:
            raise ValueError(
                f"{name}: must be a multiple of {size_multiple} (the VAE's downsampling factor), "
                f"got {value}"
            )
    batch_size = _prompt_count(prompt, prompt_embeds, text_width) * num_images_per_prompt
    generators = generator if isinstance(generator, (list, tuple)) else [generator]
    if not all(g is None or isinstance(g, torch.Generator) for g in generators) or (
        isinstance(generator, (list, tuple)) and None in generators
    ):
        raise TypeError(
            f"generator: expected a torch.Generator or a list of them, got {type(generator).__name__} {generator!r:.80}"
        )
    if isinstance(generator, (list, tuple)) and len(generator) != batch_size:
        raise ValueError(
            f"generator: a list must hold one generator per image ({batch_size}), got {len(generator)}"
        )
    if latents is not None:
        if not isinstance(latents, torch.Tensor):
            raise TypeError(f"latents: expected a tensor, got {type(latents).__name__}")
        if latents.device.type == "meta" or not latents.is_floating_point():
            raise ValueError(f"latents: expected a floating-point tensor with data, got {latents.dtype} on {latents.device}")
        expected = (batch_size, latent_channels, height // size_multiple, width // size_multiple)
        if tuple(latents.shape) != expected:
            raise ValueError(f"latents: expected shape {expected}, got {tuple(latents.shape)}")
    return batch_size


def check_guidance(guidance_scale, negative_prompt, negative_prompt_embeds, prompt_count: int, prompt_embeds) -> None:
    """guidance_scale a finite number >= 0; at most one negative input, shaped like the prompts."""
    import math

    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)):
        raise TypeError(f"guidance_scale: expected a number, got {type(guidance_scale).__name__} {guidance_scale!r:.80}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale: expected a finite number >= 0 (1 = no guidance), got {guidance_scale}")
    if negative_prompt is not None and negative_prompt_embeds is not None:
        raise ValueError("negative_prompt, negative_prompt_embeds: pass at most one of them, got both")
    if negative_prompt is not None:
        if isinstance(negative_prompt, str):
            return
        if not isinstance(negative_prompt, (list, tuple)) or not all(isinstance(p, str) for p in negative_prompt):
            raise TypeError(f"negative_prompt: expected a string or a list of strings, got {negative_prompt!r:.80}")
        if len(negative_prompt) != prompt_count:
            raise ValueError(
                f"negative_prompt: expected one per prompt ({prompt_count}), got a list of {len(negative_prompt)}"
            )
    if negative_prompt_embeds is not None:
        if prompt_embeds is None:
            raise ValueError("negative_prompt_embeds: pass it with prompt_embeds (use negative_prompt with prompt)")
        if not isinstance(negative_prompt_embeds, torch.Tensor) or negative_prompt_embeds.shape != prompt_embeds.shape:
            shape = tuple(negative_prompt_embeds.shape) if isinstance(negative_prompt_embeds, torch.Tensor) else type(negative_prompt_embeds).__name__
            raise ValueError(
                f"negative_prompt_embeds: expected the shape of prompt_embeds {tuple(prompt_embeds.shape)}, got {shape}"
            )
