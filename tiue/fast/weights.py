"""Loading new weights of the same architecture into a live model, in place.

Compiled code and captured CUDA graphs read parameters through their storage, so copying
new values into the existing tensors makes the next call use them with no recompile or
recapture.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from tiue.fast.fusion import fused_parameter_names, refresh_fused_projections

__all__ = ["load_weights_in_place", "read_state_dict"]

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors")


def read_state_dict(source: str | Path | dict, subfolder: str = "unet") -> dict[str, torch.Tensor]:
    """A state dict from a dict, a .safetensors file, a model folder or a pipeline folder."""
    if isinstance(source, dict):
        return source
    from safetensors.torch import load_file

    path = Path(source)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise ValueError(f"path_or_state_dict: expected a .safetensors file, got {path}")
        return load_file(path)
    if path.is_dir():
        for folder in (path, path / subfolder):
            for name in _WEIGHT_FILES:
                if (folder / name).is_file():
                    return load_file(folder / name)
        raise ValueError(
            f"path_or_state_dict: no {' or '.join(_WEIGHT_FILES)} in {path} or {path / subfolder}"
        )
    raise ValueError(f"path_or_state_dict: no such file or folder: {path}")


@torch.no_grad()
def load_weights_in_place(model: nn.Module, source: str | Path | dict) -> int:
    """Copy every parameter and buffer of `source` into `model`'s tensors; returns the count.

    Keys must match exactly (fused projection layers excepted: they are recomputed). Every key,
    shape and dtype is checked before the first copy, so a bad source leaves the model untouched.
    """
    state = read_state_dict(source)
    derived = fused_parameter_names(model)
    targets = {k: v for k, v in model.state_dict(keep_vars=True).items() if k not in derived}
    missing = sorted(set(targets) - set(state))
    unexpected = sorted(set(state) - set(targets))
    if missing or unexpected:
        raise ValueError(
            f"path_or_state_dict: keys do not match the model (missing {len(missing)}: "
            f"{missing[:3]}, unexpected {len(unexpected)}: {unexpected[:3]})"
        )
    for key, target in targets.items():
        _check_value(key, state[key], target)
    for key, target in targets.items():
        target.copy_(state[key])
    refresh_fused_projections(model)
    return len(targets)


def _check_value(key: str, value, target: torch.Tensor) -> None:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"path_or_state_dict: {key} is a {type(value).__name__}, not a tensor")
    if value.shape != target.shape:
        raise ValueError(
            f"path_or_state_dict: {key} has shape {tuple(value.shape)}, the model's is {tuple(target.shape)}"
        )
    if value.is_meta:
        raise ValueError(f"path_or_state_dict: {key} is a meta tensor (it has no values)")
    # Same kind or a wider one only (float16 into float32 and back is fine; complex into float
    # would drop the imaginary part, float into an integer buffer would truncate).
    if not torch.can_cast(value.dtype, target.dtype):
        raise ValueError(f"path_or_state_dict: {key} is {value.dtype}, which does not cast to the model's {target.dtype}")
