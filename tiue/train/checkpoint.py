"""Training checkpoints: written whole or not at all, the last M kept, the newest found.

A checkpoint is a folder `checkpoint-SSSSSSSS` (S = optimizer step) under OUTPUT/checkpoints:

    student.safetensors   the student UNet's raw fp32 weights
    ema.safetensors       the EMA of the student
    lora.safetensors      the fake-score LoRA weights (kept apart from the student: the paper's
                          code saved the LoRA teacher over the student)
    optimizers.pt         both optimizers' and both LR schedulers' states
    rng.pt                every rank's RNG states (python, numpy, torch, cuda)
    state.json            step, epoch and data position, micro-step, counters, loss history

It is written into a hidden temporary folder and renamed when complete (tiue.files), so a
kill at any moment leaves the previous checkpoints intact.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from tiue.files import atomic_directory

__all__ = [
    "CheckpointContents",
    "checkpoint_name",
    "list_checkpoints",
    "find_checkpoint",
    "write_checkpoint",
    "read_checkpoint",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "rng_state",
    "restore_rng_state",
    "PAUSE_ENV",
]

_NAME = re.compile(r"^checkpoint-(\d{8})$")
STATE_FILE = "state.json"
# Test hook: "STEP:SECONDS" pauses the write of checkpoint STEP halfway, so a test can kill
# the process while a checkpoint is half-written.
PAUSE_ENV = "TIUE_TEST_PAUSE_CHECKPOINT_WRITE"


@dataclass
class CheckpointContents:
    student: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    lora: dict[str, torch.Tensor]
    optimizers: dict  # {"student": ..., "lora": ..., "student_lr": ..., "lora_lr": ...}
    rng: list[dict]  # one entry per rank
    state: dict  # JSON-serialisable


def checkpoint_name(step: int) -> str:
    return f"checkpoint-{step:08d}"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under `directory`, oldest first (temporary folders are hidden)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = []
    for path in directory.iterdir():
        match = _NAME.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_checkpoint(resume: str, directory: str | Path) -> Path | None:
    """The checkpoint --resume names: "latest" (None when there is none yet) or a folder."""
    if resume == "latest":
        found = list_checkpoints(directory)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise ValueError(f"--resume: {path} is not a complete checkpoint folder (no {STATE_FILE})")
    return path


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}


def write_checkpoint(directory: str | Path, step: int, contents: CheckpointContents) -> Path:
    path = Path(directory) / checkpoint_name(step)
    with atomic_directory(path) as tmp:
        save_file(_contiguous(contents.student), tmp / "student.safetensors")
        save_file(_contiguous(contents.ema), tmp / "ema.safetensors")
        _pause_for_tests(step, tmp)
        save_file(_contiguous(contents.lora), tmp / "lora.safetensors")
        torch.save(contents.optimizers, tmp / "optimizers.pt")
        torch.save(contents.rng, tmp / "rng.pt")
        # state.json last: its presence marks the folder complete even without the rename.
        (tmp / STATE_FILE).write_text(json.dumps(contents.state, indent=1))
    return path


def _pause_for_tests(step: int, tmp: Path) -> None:
    spec = os.environ.get(PAUSE_ENV)
    if not spec:
        return
    pause_step, seconds = spec.split(":")
    if int(pause_step) == step:
        (tmp / "PAUSED").touch()
        time.sleep(float(seconds))


def read_checkpoint(path: str | Path, map_location="cpu") -> CheckpointContents:
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        return CheckpointContents(
            student=load_file(path / "student.safetensors"),
            ema=load_file(path / "ema.safetensors"),
            lora=load_file(path / "lora.safetensors"),
            optimizers=torch.load(path / "optimizers.pt", map_location=map_location, weights_only=False),
            rng=torch.load(path / "rng.pt", weights_only=False),
            state=state,
        )
    except (OSError, ValueError, RuntimeError) as error:
        raise ValueError(f"--resume: cannot read checkpoint {path}: {error}") from None


def prune_checkpoints(directory: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` checkpoints; returns the deleted folders."""
    found = list_checkpoints(directory)
    doomed = [path for _, path in found[:-keep]] if keep > 0 else []
    for path in doomed:
        shutil.rmtree(path, ignore_errors=True)
    return doomed


def remove_stale_temporaries(directory: str | Path) -> None:
    """Remove half-written checkpoint folders a killed run left behind."""
    directory = Path(directory)
    if directory.is_dir():
        for pattern in (".checkpoint-*.tmp-*", ".checkpoint-*.old-*"):
            for path in directory.glob(pattern):
                shutil.rmtree(path, ignore_errors=True)


def rng_state() -> dict:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
