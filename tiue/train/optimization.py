"""One optimizer step of the student and the fake-score LoRA together, under one loss scaler.

Under fp16 both backwards run with the same scaled loss scale. Each model's gradients are
unscaled exactly once, each is clipped to its own norm, and then both step or neither does:
a step whose gradients are not finite in either model changes no weight (the scaler lowers
its scale and the next step tries again). accelerate's own helpers cannot be used here: its
`clip_grad_norm_` unscales every prepared optimizer and its optimizer wrapper updates the
scaler after each `step()`, so with two optimizers the second one's gradients would be
unscaled twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ModelUpdate", "UpdateResult", "apply_updates"]


@dataclass
class ModelUpdate:
    """What one model's update needs: its trainable parameters, optimizer and LR schedule."""

    name: str
    params: list[torch.nn.Parameter]
    optimizer: torch.optim.Optimizer
    lr_scheduler: object


@dataclass
class UpdateResult:
    applied: bool
    grad_norms: dict[str, float]  # each model's norm before clipping (nan when not computed)
    # fp16: the loss scale was too high for this step's gradients; the scaler lowered it and the
    # next step tries again. Normal early in training, never a reason to stop.
    overflow: bool = False


def apply_updates(
    updates: list[ModelUpdate], scaler: torch.amp.GradScaler | None, max_grad_norm: float, skip: bool = False
) -> UpdateResult:
    """Unscale, clip and step every model, or none of them; gradients are cleared either way.

    skip: a loss of this step was not finite, so its backward never ran; nothing steps and
    the scaler keeps its scale (a non-finite loss says nothing about the loss scale).
    The scaler is updated exactly once per step that ran a backward.
    """
    norms = {update.name: float("nan") for update in updates}
    applied = overflow = False
    if not skip:
        if scaler is not None:
            for update in updates:
                scaler.unscale_(update.optimizer)
        for update in updates:
            norms[update.name] = float(torch.nn.utils.clip_grad_norm_(update.params, max_grad_norm))
        applied = all(math.isfinite(norm) for norm in norms.values())
        if applied:
            for update in updates:
                update.optimizer.step()
                update.lr_scheduler.step()
        if scaler is not None:
            overflow = not applied
            scaler.update()  # halves the scale after an overflow, grows it after a quiet stretch
    for update in updates:
        update.optimizer.zero_grad(set_to_none=True)
    return UpdateResult(applied, norms, overflow)
