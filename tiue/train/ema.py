"""Exponential moving average of the student's weights, kept in fp32."""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    """shadow <- d * shadow + (1 - d) * param after every optimizer step.

    The decay warms up as min(decay, (1 + n) / (10 + n)) over the first updates n (the schedule
    of diffusers' EMAModel), so a short run's EMA is not stuck at its initial weights.
    """

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in module.named_parameters()}

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        decay = self.current_decay()
        names, params = zip(*module.named_parameters())
        shadows = [self.shadow[n] for n in names]
        torch._foreach_lerp_(shadows, [p.detach().float() for p in params], 1.0 - decay)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            p.copy_(self.shadow[name].to(p.dtype))

    @contextmanager
    def swapped_into(self, module: nn.Module):
        """Temporarily give `module` the EMA weights; the originals come back bit for bit."""
        backup = {name: p.detach().clone() for name, p in module.named_parameters()}
        self.copy_to(module)
        try:
            yield module
        finally:
            with torch.no_grad():
                for name, p in module.named_parameters():
                    p.copy_(backup[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = set(self.shadow) - set(state)
        if missing:
            raise ValueError(f"EMA state: missing {len(missing)} weights, e.g. {sorted(missing)[0]}")
        for name, value in self.shadow.items():
            value.copy_(state[name])
        self.num_updates = num_updates
