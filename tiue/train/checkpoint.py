"""Training checkpoints: written whole or not at all, the last M kept, the newest found.

A checkpoint is a folder `checkpoint-SSSSSSSS` (S = optimizer step) under OUTPUT/checkpoints:

    student.safetensors   the student UNet's raw fp32 weights
    ema.safetensors       the EMA of the student
    lora.safetensors      the fake-score LoRA weights (kept apart from the student: the paper's
                          code saved the LoRA teacher over the student)
    optimizers.pt         both optimizers' and both LR schedulers' states (and the loss
                          scaler's): tensors and plain containers, read with weights_only=True
    rng.json              every rank's RNG states (python, numpy, torch, cuda) as numbers
    state.json            step, epoch and data position, micro-step, counters, loss history

Nothing in a checkpoint can run code when it is read. It is written into a hidden temporary
folder and renamed when complete (tiue.files), so a kill at any moment leaves the previous
checkpoints intact; `--resume latest` skips a damaged newest one (say, from a full disk) with
a warning and takes the newest that reads.
"""

from __future__ import annotations

import json
import logging
import random
import re
import shutil
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
    "read_resumable",
    "save_run",
    "claim_output_dir",
    "resume_run",
    "write_checkpoint",
    "read_checkpoint",
    "prune_checkpoints",
    "remove_stale_temporaries",
    "rng_state",
    "restore_rng_state",
]

_log = logging.getLogger("tiue.train")
_NAME = re.compile(r"^checkpoint-(\d{8})$")
STATE_FILE = "state.json"
# Test hook: "STEP:SECONDS" pauses the write of checkpoint STEP halfway, so a test can kill
# the process while a checkpoint is half-written.


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
        save_file(_contiguous(contents.lora), tmp / "lora.safetensors")
        torch.save(contents.optimizers, tmp / "optimizers.pt")
        (tmp / "rng.json").write_text(json.dumps(contents.rng))
        # state.json last: its presence marks the folder complete even without the rename.
        (tmp / STATE_FILE).write_text(json.dumps(contents.state, indent=1))
    return path


def read_checkpoint(path: str | Path, map_location="cpu") -> CheckpointContents:
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        return CheckpointContents(
            student=load_file(path / "student.safetensors"),
            ema=load_file(path / "ema.safetensors"),
            lora=load_file(path / "lora.safetensors"),
            optimizers=torch.load(path / "optimizers.pt", map_location=map_location, weights_only=True),
            rng=json.loads((path / "rng.json").read_text()),
            state=state,
        )
    except Exception as error:  # truncated safetensors, refused pickles, bad JSON alike
        first_line = str(error).splitlines()[0] if str(error) else ""
        raise ValueError(f"--resume: cannot read checkpoint {path}: {type(error).__name__}: {first_line}") from None


def read_resumable(resume: str, directory: str | Path) -> tuple[Path, CheckpointContents] | None:
    """The checkpoint --resume names, read. With "latest", a damaged newest checkpoint is
    skipped with a warning naming it, and the newest one that reads is taken (None: none)."""
    if resume != "latest":
        path = find_checkpoint(resume, directory)
        return path, read_checkpoint(path)
    for _, path in reversed(list_checkpoints(directory)):
        try:
            return path, read_checkpoint(path)
        except ValueError as error:
            _log.warning("--resume latest: skipping damaged checkpoint %s (%s)", path, error)
    return None


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
    """This process's RNG states as JSON-ready numbers."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), position, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])



# -- a Trainer's checkpoint ----------------------------------------------------------------


def claim_output_dir(output_dir: Path, config, accelerator) -> None:
    """Refuse to train over an earlier run unless --resume or --overwrite says what to do with
    it: a finished final/ is never replaced, nor old checkpoints left for a later --resume."""
    from tiue.train.config import flag_name

    earlier = [p for p in (output_dir / "final", output_dir / "checkpoints") if p.exists()]
    if not earlier or config.resume is not None:
        return
    if not config.overwrite:
        raise ValueError(
            f"{flag_name('output_dir')}: {output_dir} already holds a run ({', '.join(p.name for p in earlier)}); "
            f"pass {flag_name('resume')} latest to continue it, {flag_name('overwrite')} to start over, "
            "or another --output-dir"
        )
    if accelerator.is_main_process:
        for path in earlier:
            shutil.rmtree(path)
    accelerator.wait_for_everyone()


def _run_state(trainer) -> dict:
    return {
        "step": trainer.step,
        "micro_step": trainer.micro_step,
        "epoch": trainer.position.epoch,
        "batch_in_epoch": trainer.position.batch,
        "ema_updates": trainer.ema.num_updates,
        "consecutive_nonfinite": trainer.consecutive_nonfinite,
        "nonfinite_total": trainer.nonfinite_total,
        "num_processes": trainer.accelerator.num_processes,
        "batch_size": trainer.batch_size,
        "num_captions": len(trainer.captions),
        "history": trainer.history.records,
        "config": trainer.config.to_dict(),
    }


def save_run(trainer) -> Path:
    """Write the trainer's checkpoint for its current step (main process; all ranks' RNG)."""
    from accelerate.utils import gather_object

    from tiue.train.models import lora_state_dict

    acc = trainer.accelerator
    rng = gather_object([rng_state()])  # every rank's
    path = trainer.checkpoint_dir / checkpoint_name(trainer.step)
    if acc.is_main_process:
        optimizers = {
            "student": trainer.student_optimizer.state_dict(),
            "lora": trainer.lora_optimizer.state_dict(),
            "student_lr": trainer.student_lr.state_dict(),
            "lora_lr": trainer.lora_lr.state_dict(),
        }
        if trainer.grad_scaler is not None:
            optimizers["scaler"] = trainer.grad_scaler.state_dict()
        contents = CheckpointContents(
            student=trainer.student_unet.state_dict(),
            ema=trainer.ema.state_dict(),
            lora=lora_state_dict(trainer.fake_score_unet),
            optimizers=optimizers,
            rng=rng,
            state=_run_state(trainer),
        )
        write_checkpoint(trainer.checkpoint_dir, trainer.step, contents)
        prune_checkpoints(trainer.checkpoint_dir, trainer.config.keep_checkpoints)
    acc.wait_for_everyone()
    return path


def resume_run(trainer, resume: str) -> None:
    """Give the trainer back the state of the checkpoint --resume names."""
    from tiue.train.config import flag_name
    from tiue.train.data import SamplerPosition
    from tiue.train.models import load_lora_state_dict
    from tiue.train.monitoring import LossHistory

    found = read_resumable(resume, trainer.checkpoint_dir)
    if found is None:
        if trainer.accelerator.is_main_process:
            _log.warning("--resume latest: no checkpoint under %s yet; starting fresh", trainer.checkpoint_dir)
        return
    path, contents = found
    state = contents.state
    for key, now in (("num_processes", trainer.accelerator.num_processes), ("batch_size", trainer.batch_size),
                     ("num_captions", len(trainer.captions))):
        if state[key] != now:
            raise ValueError(
                f"{flag_name('resume')}: {path} was written with {key}={state[key]}, this run has {now}; "
                "resuming would change the data order (use the same captions, batch size and process count)"
            )
    trainer.student_unet.load_state_dict(contents.student, strict=True)
    trainer.ema.load_state_dict(contents.ema, state["ema_updates"])
    load_lora_state_dict(trainer.fake_score_unet, contents.lora)
    trainer.student_optimizer.load_state_dict(contents.optimizers["student"])
    trainer.lora_optimizer.load_state_dict(contents.optimizers["lora"])
    trainer.student_lr.load_state_dict(contents.optimizers["student_lr"])
    trainer.lora_lr.load_state_dict(contents.optimizers["lora_lr"])
    if trainer.grad_scaler is not None and "scaler" in contents.optimizers:
        trainer.grad_scaler.load_state_dict(contents.optimizers["scaler"])
    trainer.step = state["step"]
    trainer.micro_step = state["micro_step"]
    trainer.position = SamplerPosition(state["epoch"], state["batch_in_epoch"])
    trainer.consecutive_nonfinite = state["consecutive_nonfinite"]
    trainer.nonfinite_total = state["nonfinite_total"]
    trainer.history = LossHistory(state["history"])
    trainer._rng_to_restore = contents.rng[trainer.accelerator.process_index]
    trainer.last_checkpoint = path
