"""What every world training loop shares: thread count, an EMA of weights, a timed log."""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

__all__ = ["ExponentialMovingAverage", "ProgressLog", "set_threads"]


def set_threads(num_threads: int | None) -> None:
    """Limit intra-op threads (this project's CPUs are shared); None keeps torch's choice."""
    if num_threads is not None:
        if num_threads < 1:
            raise ValueError(f"num_threads: expected an integer >= 1, got {num_threads}")
        torch.set_num_threads(num_threads)


class ExponentialMovingAverage:
    """A frozen copy of a model whose weights follow the live ones: w <- d*w + (1-d)*live.

    Short runs benefit most: the average smooths the last few hundred noisy steps. The decay
    is warmed up as min(decay, (1 + n) / (10 + n)) so early weights do not dominate.
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema_decay: expected a value in [0, 1), got {decay}")
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for average, live in zip(self.model.parameters(), model.parameters()):
            average.lerp_(live.detach(), 1.0 - decay)
        for average, live in zip(self.model.buffers(), model.buffers()):
            average.copy_(live)

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "updates": torch.tensor(self.updates)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.updates = int(state["updates"])


class ProgressLog:
    """Prints 'job step/total loss=... (elapsed, steps/s)' every `every` steps and at the end."""

    def __init__(self, job: str, total: int, every: int = 50, first: int = 1):
        self.job, self.total, self.every = job, total, max(1, every)
        self.first = first  # a resumed run starts past 1: its rate counts only its own steps
        self.start = time.perf_counter()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def step(self, step: int, **values: float) -> None:
        if step % self.every and step != self.total:
            return
        rate = (step - self.first + 1) / max(self.elapsed, 1e-9)
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        print(f"{self.job} {step}/{self.total} {shown} ({self.elapsed:.0f}s, {rate:.2f} steps/s)", flush=True)
