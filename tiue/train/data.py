"""Captions for image-free distillation, and the sampler that deals them out.

Captions come from a .txt file (one per line), a .jsonl file (one object per line; the
caption under a configurable, possibly dotted field such as JourneyDB's `Task2.Caption`), or
a folder holding such files. Empty and duplicate captions are removed, as the paper did for
JourneyDB, keeping first occurrences in file order so every process sees the same list.

The sampler is a pure function of (seed, epoch, batch index): it needs no state beyond its
position, so a resumed run draws exactly the batch the interrupted run would have drawn next.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["load_captions", "CaptionSampler", "SamplerPosition", "CAPTION_SUFFIXES", "AUTO_CAPTION_FIELDS"]

CAPTION_SUFFIXES = (".txt", ".jsonl")
# Tried in order when no field is given: the keys the official training dataset reads, in its
# order, then other common names and JourneyDB's nested layout.
AUTO_CAPTION_FIELDS = ("Caption", "Caption:", "caption", "text", "prompt", "Task2.Caption")


def load_captions(path: str | Path, field: str | None = None) -> list[str]:
    """Unique non-empty captions from a .txt/.jsonl file or a folder of them, in file order."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"--captions: no such file or folder: {path}")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in CAPTION_SUFFIXES)
        if not files:
            raise ValueError(
                f"--captions: folder {path} holds no caption files (accepted: {', '.join(CAPTION_SUFFIXES)})"
            )
    elif path.suffix in CAPTION_SUFFIXES:
        files = [path]
    else:
        raise ValueError(
            f"--captions: unsupported file type {path.suffix!r} ({path}); accepted: "
            f"{', '.join(CAPTION_SUFFIXES)} or a folder of them"
        )

    seen: dict[str, None] = {}  # an ordered set
    lines_read = 0
    for file in files:
        try:
            for caption in _read_file(file, field):
                lines_read += 1
                caption = " ".join(caption.split())  # trim and fold whitespace runs
                if caption:
                    seen.setdefault(caption)
        except UnicodeDecodeError as error:
            raise ValueError(f"--captions: {file} is not UTF-8 text (byte {error.start}: {error.reason})") from None
    if not seen:
        raise ValueError(
            f"--captions: no captions in {path} ({lines_read} entries read, all empty or missing)"
        )
    return list(seen)


def _read_file(file: Path, field: str | None):
    if file.suffix == ".txt":
        yield from file.read_text(encoding="utf-8").splitlines()
        return
    with file.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"--captions: {file}:{number} is not valid JSON ({error.msg})") from None
            yield _caption_of(record, field, file, number)


def _caption_of(record, field: str | None, file: Path, number: int) -> str:
    fields = (field,) if field else AUTO_CAPTION_FIELDS
    for name in fields:
        value = record
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, str):
            return value
        if value is not None and field:
            raise ValueError(
                f"--caption-field: {name!r} in {file}:{number} holds a {type(value).__name__}, not a string"
            )
    if field:
        return ""  # a record without the field counts as an empty caption
    raise ValueError(
        f"--captions: {file}:{number} has none of the fields {', '.join(AUTO_CAPTION_FIELDS)}; "
        "name the caption field with --caption-field (dotted for nested keys)"
    )


@dataclass(frozen=True)
class SamplerPosition:
    """Where the next micro-batch starts: its epoch and its index within the epoch."""

    epoch: int = 0
    batch: int = 0


class CaptionSampler:
    """Seeded, sharded, resumable batches of caption indices.

    Each epoch is one permutation of all captions, drawn from (seed, epoch). A global batch
    is `batch_size * num_processes` consecutive entries of it; process r takes the r-th slice,
    so one process with the doubled batch sees exactly what two processes see together. The
    incomplete tail of an epoch is dropped, so every step has full batches on every process.
    """

    def __init__(
        self, num_captions: int, batch_size: int, num_processes: int = 1, rank: int = 0, seed: int = 0,
        epoch_seeds: list[list[int]] | None = None,
    ):
        if not 0 <= rank < num_processes:
            raise ValueError(f"rank: expected 0 <= rank < {num_processes}, got {rank}")
        self.num_captions = num_captions
        self.batch_size = batch_size
        self.num_processes = num_processes
        self.rank = rank
        self.seed = seed
        # [first epoch, seed] pairs, oldest first: a run resumed with another --seed keeps the
        # shuffle of the epoch under way (tiue.train.resume_settings.data_seed_schedule).
        self.epoch_seeds = [list(entry) for entry in epoch_seeds] if epoch_seeds else [[0, seed]]
        self.global_batch_size = batch_size * num_processes
        if num_captions < self.global_batch_size:
            raise ValueError(
                f"--batch-size: one step needs {self.global_batch_size} captions "
                f"({batch_size} per process x {num_processes} processes), but --captions holds only "
                f"{num_captions} unique ones"
            )
        self._permutation_epoch = -1
        self._permutation: torch.Tensor | None = None

    @property
    def batches_per_epoch(self) -> int:
        return self.num_captions // self.global_batch_size

    def seed_of(self, epoch: int) -> int:
        return [seed for first, seed in self.epoch_seeds if first <= epoch][-1]

    def set_epoch_seeds(self, epoch_seeds: list[list[int]]) -> None:
        self.epoch_seeds = [list(entry) for entry in epoch_seeds]
        self._permutation_epoch = -1

    def permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._permutation_epoch:
            generator = torch.Generator().manual_seed(self.seed_of(epoch) * 1_000_003 + epoch)
            self._permutation = torch.randperm(self.num_captions, generator=generator)
            self._permutation_epoch = epoch
        return self._permutation

    def batch(self, position: SamplerPosition) -> tuple[list[int], int]:
        """(this process's caption indices, global index of its first sample within the batch)."""
        start = position.batch * self.global_batch_size + self.rank * self.batch_size
        indices = self.permutation(position.epoch)[start : start + self.batch_size]
        return indices.tolist(), self.rank * self.batch_size

    def advance(self, position: SamplerPosition) -> SamplerPosition:
        if position.batch + 1 < self.batches_per_epoch:
            return SamplerPosition(position.epoch, position.batch + 1)
        return SamplerPosition(position.epoch + 1, 0)
