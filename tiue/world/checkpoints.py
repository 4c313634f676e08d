"""Resumable world training: each stage's state saved every few minutes, atomically.

A stage (vae, teacher, features) keeps one file, OUTPUT/checkpoints/STAGE.pt, holding its
step, model and EMA weights, optimizer and LR-schedule state and its random generator. The
file holds tensors and plain containers only and is read with `weights_only=True`, so a
planted file cannot run code. It is written to a temporary name and renamed, so a kill at
any moment leaves the previous checkpoint whole: an interruption costs at most the steps
since the last save. A finished stage is saved with `finished=True` and skipped on resume.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from tiue.files import atomic_path

__all__ = ["StageCheckpoint", "LoopParts", "run_steps", "CHECKPOINT_SECONDS"]

# Save at most this often: cheap next to a step, and bounds what a kill can cost.
CHECKPOINT_SECONDS = 120.0


class StageCheckpoint:
    """The checkpoint file of one stage of a world recipe."""

    def __init__(self, directory: str | Path, stage: str, every_seconds: float | None = None):
        self.path = Path(directory) / f"{stage}.pt"
        self.stage = stage
        self.every_seconds = CHECKPOINT_SECONDS if every_seconds is None else every_seconds
        self._last_save = self._started = time.monotonic()
        self.earlier_seconds = 0.0  # what earlier sittings spent in this stage's loop

    def started(self) -> None:
        self._last_save = self._started = time.monotonic()

    def load(self) -> dict | None:
        """The saved state, or None when the stage has not saved yet."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as error:  # unpickling refusals and truncated files alike
            raise ValueError(f"--resume: cannot read {self.path} ({type(error).__name__}: {error}); delete it to redo the {self.stage} stage") from None
        self.earlier_seconds = float(state.get("seconds", 0.0))
        return state

    def due(self) -> bool:
        return time.monotonic() - self._last_save >= self.every_seconds

    def save(self, state: dict) -> None:
        state = dict(state, seconds=self.earlier_seconds + time.monotonic() - self._started)
        with atomic_path(self.path, suffix=".pt") as tmp:
            torch.save(state, tmp)
        self._last_save = time.monotonic()



class LoopParts:
    """What a stage's loop must get back to continue exactly: named modules, the optimizer, its
    LR schedule, the data generator and named EMAs (objects with state_dict/load_state_dict)."""

    def __init__(self, modules: dict, optimizer, schedule, generator: torch.Generator, emas: dict | None = None):
        self.modules, self.optimizer, self.schedule = modules, optimizer, schedule
        self.generator, self.emas = generator, emas or {}

    def state(self, step: int, finished: bool = False, **extra) -> dict:
        return {
            "step": step,
            "finished": finished,
            "modules": {name: module.state_dict() for name, module in self.modules.items()},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "emas": {name: ema.state_dict() for name, ema in self.emas.items()},
            **extra,
        }

    def restore(self, state: dict) -> int:
        """Load a saved state; returns the next step to run."""
        for name, module in self.modules.items():
            module.load_state_dict(state["modules"][name])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.generator.set_state(state["generator"])
        for name, ema in self.emas.items():
            ema.load_state_dict(state["emas"][name])
        return int(state["step"]) + 1


def run_steps(parts: LoopParts, total: int, checkpoint: StageCheckpoint | None, step_fn, log) -> None:
    """Run step_fn(step) for the steps not yet done, saving `parts` every few minutes and at the end."""
    first = 1
    if checkpoint is not None:
        checkpoint.started()
    if checkpoint is not None and (saved := checkpoint.load()) is not None:
        first = parts.restore(saved)
        print(f"{checkpoint.stage}: resumed at step {first - 1}/{total} from {checkpoint.path}", flush=True)
    log.first = first
    for step in range(first, total + 1):
        step_fn(step)
        if checkpoint is not None and checkpoint.due() and step < total:
            checkpoint.save(parts.state(step))
    if checkpoint is not None and first <= total:
        checkpoint.save(parts.state(total, finished=True))

