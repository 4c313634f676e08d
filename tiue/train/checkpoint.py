"""Training checkpoints: written whole or not at all, the last M kept, the newest found.

A checkpoint is a folder `checkpoint-SSSSSSSS` (S = optimizer step) under OUTPUT/checkpoints:

    student.safetensors   the student UNet's raw fp32 weights
    ema.safetensors       the EMA of the student
    lora.safetensors      the fake-score LoRA weights (kept apart from the student: the paper's
                          code saved the LoRA teacher over the student)
    optimizers.pt         both optimizers' and both LR schedulers' states (and the loss
                          scaler's): tensors and plain containers, read with weights_only=True
    rng.json              every rank's RNG states (python, numpy, torch, cuda) as numbers
    state.json            step, epoch and data position, micro-step, counters, settings (the
                          loss history is OUTPUT/history.jsonl, appended step by step)

Nothing in a checkpoint can run code when it is read. It is written into a hidden temporary
folder and renamed when complete (tiue.files), so a kill at any moment leaves the previous
checkpoints intact; `--resume latest` skips a damaged newest one (say, from a full disk) with
a warning and takes the newest that reads.

Every rank reads the checkpoint memory-mapped (safetensors, and torch.load(mmap=True)): the
files' pages come from the OS page cache, one copy per machine shared by all its ranks, and each
tensor is copied straight into its model, optimizer or device; no rank holds a private copy of
the whole checkpoint.

Checkpoints form one line of steps: resuming from a checkpoint older than the newest moves the
newer ones (a line of steps now abandoned) to checkpoints/abandoned-after-SSSSSSSS/, where
nothing prunes them, so `--resume latest` and pruning see only the resumed run's line.
"""

from __future__ import annotations

import json
import logging
import os
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
    "set_aside_newer_checkpoints",
    "rng_state",
    "restore_rng_state",
]

_log = logging.getLogger("tiue.train")
_NAME = re.compile(r"^checkpoint-(\d{8})$")
STATE_FILE = "state.json"


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
    """The checkpoint's contents, memory-mapped: tensors are read from the files (through the page
    cache) when they are first used, and a private copy is made only of what is written to."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
        return CheckpointContents(
            student=load_file(path / "student.safetensors"),
            ema=load_file(path / "ema.safetensors"),
            lora=load_file(path / "lora.safetensors"),
            optimizers=torch.load(path / "optimizers.pt", map_location=map_location, weights_only=True, mmap=True),
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


def set_aside_newer_checkpoints(directory: str | Path, step: int) -> Path | None:
    """Move the checkpoints newer than `step` (a line of steps a resume from `step` abandons) to
    checkpoints/abandoned-after-SSSSSSSS/ (a numbered suffix if that exists); returns it, or None."""
    newer = [path for found, path in list_checkpoints(directory) if found > step]
    if not newer:
        return None
    aside = Path(directory) / f"abandoned-after-{step:08d}"
    suffix = 1
    while aside.exists():
        suffix += 1
        aside = Path(directory) / f"abandoned-after-{step:08d}-{suffix}"
    aside.mkdir()
    for path in newer:
        os.replace(path, aside / path.name)
    return aside


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
    if config.resume == "latest" and (output_dir / "final").exists() and not list_checkpoints(output_dir / "checkpoints"):
        raise ValueError(
            f"{flag_name('resume')}: {output_dir} holds a finished run (final/) and no checkpoint to continue; "
            f"pass {flag_name('overwrite')} to start over (deleting it), or another --output-dir"
        )
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
        (output_dir / "history.jsonl").unlink(missing_ok=True)
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
        "overflow_total": trainer.overflow_total,
        "num_processes": trainer.accelerator.num_processes,
        "batch_size": trainer.batch_size,
        "num_captions": len(trainer.captions),
        "data_seeds": trainer.sampler.epoch_seeds,
        "setting_changes": trainer.setting_changes,
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

    acc = trainer.accelerator
    found = read_resumable(resume, trainer.checkpoint_dir)
    if found is None:
        if acc.is_main_process:
            _log.warning("--resume latest: no checkpoint under %s yet; starting fresh", trainer.checkpoint_dir)
        return
    path, contents = found
    state = contents.state
    for key, now in (("num_processes", acc.num_processes), ("batch_size", trainer.batch_size),
                     ("num_captions", len(trainer.captions))):
        if state[key] != now:
            raise ValueError(
                f"{flag_name('resume')}: {path} was written with {key}={state[key]}, this run has {now}; "
                "resuming would change the data order (use the same captions, batch size and process count)"
            )
    changes = _check_settings(trainer.config, state, path)
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
    trainer.overflow_total = state.get("overflow_total", 0)
    trainer.setting_changes = list(state.get("setting_changes", []))
    seeds = state.get("data_seeds") or [[0, state["config"]["seed"]]]
    if "seed" in changes:
        from tiue.train.resume_settings import data_seed_schedule

        seeds = data_seed_schedule(seeds, trainer.config.seed, state["epoch"], state["batch_in_epoch"])
    trainer.sampler.set_epoch_seeds(seeds)
    if changes:
        trainer.setting_changes.append({"step": trainer.step, "changed": changes})
    trainer._rng_to_restore = contents.rng[acc.process_index]
    trainer.last_checkpoint = path
    del contents  # the mapped files: what was copied out stays, the mappings go

    if acc.is_main_process:
        trainer.history = LossHistory(_resumed_history(trainer, state, changes))
        aside = set_aside_newer_checkpoints(trainer.checkpoint_dir, trainer.step)
        if aside is not None:
            _log.warning(
                "--resume: %s is older than the newest checkpoint; the newer ones (a line of steps this run "
                "abandons) were moved to %s, so --resume latest continues this run", path, aside,
            )
    acc.wait_for_everyone()


def _check_settings(config, state: dict, path: Path) -> dict[str, list]:
    """The method settings this run changes against the checkpoint's: refused, unless
    --allow-setting-changes, which logs them (and the caller records them)."""
    from tiue.train.config import flag_name
    from tiue.train.resume_settings import changed_settings, describe_changes

    saved = dict(state["config"])
    # Before kl_reference_batch_size existed, lambda_kl weighed the KL sum at the run's own batch.
    saved.setdefault("kl_reference_batch_size", state["batch_size"])
    changes = changed_settings(saved, config.to_dict())
    if changes and not config.allow_setting_changes:
        raise ValueError(
            f"{flag_name('resume')}: {path} was written with other method settings ({describe_changes(changes)}); "
            f"resume with the checkpoint's settings, pass {flag_name('allow_setting_changes')} to continue with "
            f"the new ones (recorded in the run), or start a new run in another --output-dir"
        )
    if changes:
        _log.warning("--resume: continuing %s with changed settings: %s", path, describe_changes(changes))
    return changes


def _resumed_history(trainer, state: dict, changes: dict) -> list[dict]:
    """The loss history up to the checkpoint's step, from OUTPUT/history.jsonl (or, for a
    checkpoint of an older tiue, from its state.json), and a resume marker appended to the file."""
    history = trainer.history_file
    if "history" in state and not history.path.is_file():
        for record in state["history"]:
            history.append(record)
    history.mark_resume(trainer.step, **({"changed": changes} if changes else {}))
    return history.read(up_to_step=trainer.step)
