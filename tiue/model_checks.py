"""Checks of a model itself, for the pipelines: its folder's configs when it loads, the sizes it
can sample, and its output before anything is written.

A config value that makes no sense (a VAE scaling factor of 0, a scheduler without training
timesteps, a tokenizer without a usable length limit) otherwise ends in a traceback from deep
inside diffusers or tokenizers; a model that produces NaN would write black images. Each error
here names the file or argument and the value.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

__all__ = [
    "NonFiniteOutputError",
    "check_finite_output",
    "check_image_size",
    "check_model_folder",
    "check_pipeline_size",
    "memory_bytes",
    "smallest_latent_side",
]


class NonFiniteOutputError(FloatingPointError):
    """The model produced NaN or infinite values: broken weights or configs, not bad input."""


# -- the folder's configs -----------------------------------------------------------------


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _read(path: Path) -> dict | None:
    """A component's config, None when the file does not exist (diffusers reports that itself)."""
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not readable JSON ({error})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(config).__name__}")
    return config


def _check_vae(path: Path, config: dict) -> None:
    scaling = config.get("scaling_factor", 0.18215)  # diffusers' default when the key is absent
    if not _number(scaling) or not math.isfinite(scaling) or scaling <= 0:
        raise ValueError(
            f"{path}: scaling_factor is {scaling!r}; expected a finite number > 0 (latents are divided by it)"
        )
    shift = config.get("shift_factor")
    if shift is not None and (not _number(shift) or not math.isfinite(shift)):
        raise ValueError(f"{path}: shift_factor is {shift!r}; expected a finite number or null")


def _check_scheduler(path: Path, config: dict) -> None:
    steps = config.get("num_train_timesteps", 1000)  # diffusers' default when the key is absent
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(
            f"{path}: num_train_timesteps is {steps!r}; expected an integer >= 1 (1000 for Stable Diffusion)"
        )
    betas = config.get("trained_betas")
    if betas is not None:
        if not isinstance(betas, list) or len(betas) != steps:
            count = len(betas) if isinstance(betas, list) else type(betas).__name__
            raise ValueError(f"{path}: trained_betas has {count} values; expected one per training timestep ({steps})")
        bad = next((b for b in betas if not _number(b) or not 0 < b < 1), None)
        if bad is not None:
            raise ValueError(f"{path}: trained_betas holds {bad!r}; expected numbers between 0 and 1")
        return
    start, end = config.get("beta_start", 0.0001), config.get("beta_end", 0.02)
    for name, value in (("beta_start", start), ("beta_end", end)):
        if not _number(value) or not 0 < value < 1:
            raise ValueError(f"{path}: {name} is {value!r}; expected a number between 0 and 1")
    if start > end:
        raise ValueError(f"{path}: beta_start ({start}) is above beta_end ({end}); expected beta_start <= beta_end")


def _check_tokenizer(path: Path, config: dict, positions: int | None) -> None:
    length = config.get("model_max_length")
    if _number(length) and float(length).is_integer():
        length = int(length)
    upper = positions if positions is not None else 10_000
    if isinstance(length, bool) or not isinstance(length, int) or not 2 <= length <= upper:
        where = f"{positions} (the text encoder's max_position_embeddings)" if positions is not None else str(upper)
        shown = "missing" if "model_max_length" not in config else f"{config['model_max_length']!r}"
        raise ValueError(
            f"{path}: model_max_length is {shown}; expected the prompt length in tokens (77 for CLIP), "
            f"an integer from 2 to {where}"
        )


def check_model_folder(folder: str | Path) -> None:
    """Check the configs of a local pipeline folder before diffusers loads it (hub ids and
    files that are absent are left to diffusers). Raises ValueError naming the file and value."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    vae = _read(folder / "vae" / "config.json")
    if vae is not None:
        _check_vae(folder / "vae" / "config.json", vae)
    scheduler = _read(folder / "scheduler" / "scheduler_config.json")
    if scheduler is not None:
        _check_scheduler(folder / "scheduler" / "scheduler_config.json", scheduler)
    for tokenizer_dir in sorted(folder.glob("tokenizer*")):
        config_path = tokenizer_dir / "tokenizer_config.json"
        config = _read(config_path)
        if config is None:
            continue
        encoder = _read(folder / tokenizer_dir.name.replace("tokenizer", "text_encoder", 1) / "config.json") or {}
        positions = encoder.get("max_position_embeddings")
        _check_tokenizer(config_path, config, positions if isinstance(positions, int) else None)


# -- sizes ------------------------------------------------------------------------------------


def _group_values_ok(side_h: int, side_w: int, channels, groups: int) -> bool:
    """GroupNorm over one image needs at least 2 values per group (with one it divides by zero
    variance: torch refuses it at batch 1 and returns zeros above)."""
    return all(max(1, c // groups) * side_h * side_w >= 2 for c in channels)


def _unet_levels(unet_config) -> list[tuple[int, list[int]]]:
    """(halvings, channels entering the norms) per UNet level: level i runs at 1/2**i of the
    latents and first normalises the previous level's channels."""
    channels = list(unet_config.block_out_channels)
    return [(i, [channels[max(0, i - 1)], channels[i]]) for i in range(len(channels))]


def _fits(latent_h: int, latent_w: int, unet_config, vae_config) -> bool:
    groups = unet_config.norm_num_groups or 32
    for halvings, channels in _unet_levels(unet_config):
        h, w = latent_h, latent_w
        for _ in range(halvings):  # a stride-2 convolution with padding 1 rounds up
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        if not _group_values_ok(h, w, channels, groups):
            return False
    # The VAE decoder starts at the latents' size with its widest channels and only grows.
    return _group_values_ok(latent_h, latent_w, [vae_config.block_out_channels[-1]], vae_config.norm_num_groups)


def smallest_latent_side(unet_config, vae_config) -> int:
    """The smallest square latent side the model can sample (GroupNorm's limit, with the UNet's
    downsampling): 3 for the shapes models, 1 for Stable Diffusion."""
    side = 1
    while not _fits(side, side, unet_config, vae_config):
        side += 1
    return side


def _machine_bytes(device) -> tuple[int | None, str]:
    """The memory of the device that holds the activations (all of it, not what is free now)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory, f"GPU {device}"
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"
        except (ValueError, OSError, AttributeError):
            return None, "RAM"
    return None, str(device)


def memory_bytes(images: int, height: int, width: int, unet_config, vae_config, itemsize: int,
                 rows_per_image: int = 1, decode: bool = True, vae_images: int | None = None,
                 vae_tiled: bool = False) -> int:
    """A lower bound on what one call holds at its peak: two activations of the UNet's first level
    over all its rows (`rows_per_image`: K decoder rows, doubled by guidance), or two of the VAE
    decoder's last, full-resolution level (its narrowest width; 3 channels when it decodes in
    tiles) for `vae_images` at once (1 with VAE slicing), whichever is larger."""
    scale = 2 ** (len(vae_config.block_out_channels) - 1)
    latent = (height // scale) * (width // scale)
    unet = images * rows_per_image * unet_config.block_out_channels[0] * latent * itemsize * 2
    if not decode:
        return unet
    vae_width = 3 if vae_tiled else vae_config.block_out_channels[0]
    vae = (images if vae_images is None else vae_images) * vae_width * height * width * itemsize * 2
    return max(unet, vae)


# The largest side sampled at all. At 16384 px the VAE decoder's last level alone (128 channels in
# Stable Diffusion) holds 3.4e10 values per image, 64 GiB in half precision, past 2**31-element
# kernel indexing and the memory of any single GPU; the UNet's self-attention over the latents
# (4.2 million tokens) would run for hours. Past it, a size is a typo, not a request.
MAX_SIDE = 16384


def check_image_size(height: int, width: int, images: int, unet_config, vae_config, device, itemsize: int,
                     **memory) -> None:
    """Refuse, before anything is allocated, sizes the model cannot sample: below the smallest
    its GroupNorms take, past MAX_SIDE, or whose activations cannot fit in the whole memory of
    the device. `memory`: memory_bytes' keyword arguments (rows_per_image, decode, vae_images,
    vae_tiled)."""
    for name, value in (("height", height), ("width", width)):
        if value > MAX_SIDE:
            raise ValueError(f"{name}: expected at most {MAX_SIDE} px (no device holds a larger sample), got {value}")
    scale = 2 ** (len(vae_config.block_out_channels) - 1)
    if not _fits(height // scale, width // scale, unet_config, vae_config):
        smallest = smallest_latent_side(unet_config, vae_config) * scale
        small = [name for name, value in (("height", height), ("width", width)) if value < smallest] or ["height", "width"]
        raise ValueError(
            f"{', '.join(small)}: {height} x {width} px is too small for this model (its UNet halves the "
            f"latents {len(unet_config.block_out_channels) - 1} times and each GroupNorm needs 2 values per "
            f"group); the smallest size is {smallest} x {smallest} px"
        )
    needed = memory_bytes(images, height, width, unet_config, vae_config, itemsize, **memory)
    total, where = _machine_bytes(device)
    if total is not None and needed > total:
        large = [name for name, value in (("height", height), ("width", width)) if value == max(height, width)]
        raise ValueError(
            f"{', '.join(large)}: {height} x {width} px for {images} image(s) needs at least "
            f"{needed / 2**30:,.0f} GiB of activations; {where} holds {total / 2**30:,.0f} GiB"
        )


def check_pipeline_size(pipe, height: int, width: int, images: int, num_steps: int, guided: bool, mode: str,
                        output_type: str) -> None:
    """check_image_size for a call of a TiUE pipeline, with its models, device, dtype and VAE switches."""
    rows = (num_steps if mode == "loopfree" else 1) * (2 if guided else 1)
    check_image_size(
        height, width, images, pipe.unet.config, pipe.vae.config, pipe._execution_device, pipe.unet.dtype.itemsize,
        rows_per_image=rows, decode=output_type != "latent",
        vae_images=1 if getattr(pipe.vae, "use_slicing", False) else None,
        vae_tiled=bool(getattr(pipe.vae, "use_tiling", False)),
    )


# -- the output -------------------------------------------------------------------------------


def check_finite_output(values, what: str) -> None:
    """Raise NonFiniteOutputError when `values` (the latents or the decoded images) hold NaN or
    infinity, naming the images: nothing is written from them."""
    import torch

    finite = torch.isfinite(values.float() if values.dtype in (torch.float16, torch.bfloat16) else values)
    bad = (~finite.flatten(1).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
        raise NonFiniteOutputError(
            f"the model produced NaN or infinite {what} for image(s) {shown} of {values.shape[0]}: its "
            "weights or configs are broken (say, a NaN in the VAE's scaling_factor or the scheduler's "
            "betas); no image is returned"
        )
