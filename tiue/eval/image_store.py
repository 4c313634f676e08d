"""Generated images on disk, one PNG per global index: written as they are made, so memory
holds one batch, and a stopped run resumes from what is already there.

Each file is written under a temporary name and renamed, so a file that exists is complete.
`settings.json` records what made the images, the model's files included (model_fingerprint:
their paths, sizes and modification times), so a resumed run with other settings, or with
another model put at the same path, is refused rather than silently mixing two models' images.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ImageStore", "model_fingerprint", "MODEL_FINGERPRINT_KEY"]

MODEL_FINGERPRINT_KEY = "model_files"


class ImageStore:
    def __init__(self, folder: str | Path, flag: str = "--out-dir"):
        self.folder = Path(folder)
        self.flag = flag

    def path(self, index: int) -> Path:
        return self.folder / f"{index:06d}.png"

    def claim(self, settings: dict) -> None:
        """Record `settings`, or check them against the ones already recorded."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self.folder / "settings.json"
        wanted = json.loads(json.dumps(settings, sort_keys=True, default=str))
        if record.is_file():
            found = json.loads(record.read_text())
            if found != wanted:
                changed = sorted(k for k in set(found) | set(wanted) if found.get(k) != wanted.get(k))
                if changed == [MODEL_FINGERPRINT_KEY]:
                    raise ValueError(
                        f"{self.flag}: {self.folder} holds images of another model at --model {wanted.get('model')} "
                        "(its files' sizes or modification times changed since, or the folder predates this record); "
                        "expected a new folder for this model, or delete the old images to start again"
                    )
                raise ValueError(
                    f"{self.flag}: {self.folder} holds images made with other settings (differs in {', '.join(changed)}); "
                    "expected a new folder or the settings it was made with"
                )
            return
        temporary = record.with_name(f".settings.{os.getpid()}.tmp")
        temporary.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
        os.replace(temporary, record)

    def missing(self, indices) -> list[int]:
        return [i for i in indices if not self.path(i).is_file()]

    def write(self, index: int, image: np.ndarray) -> None:
        target = self.path(index)
        temporary = target.with_name(f".{target.stem}.{os.getpid()}.tmp.png")
        self.folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(temporary)
        os.replace(temporary, target)

    def read(self, indices) -> np.ndarray:
        """(len(indices), H, W, 3) uint8."""
        return np.stack([np.asarray(Image.open(self.path(i)).convert("RGB")) for i in indices])

    def open(self, index: int) -> Image.Image:
        return Image.open(self.path(index)).convert("RGB")


def _folder_fingerprint(folder: Path) -> list:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    return [[str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]


def model_fingerprint(model: str) -> str:
    """A digest of the model's files (relative paths, sizes, modification times: weights and
    configs alike, no hashing of gigabytes). Local folders and embedded names are read where
    they are; a hub id is read from its cached snapshot (the commit's folder)."""
    from tiue.embedded import resolve_model

    folder = Path(resolve_model(model))
    if folder.is_dir():
        listing = _folder_fingerprint(folder)
    else:
        try:
            from huggingface_hub import snapshot_download

            snapshot = Path(snapshot_download(model, local_files_only=True))
            listing = [model, snapshot.name, _folder_fingerprint(snapshot)]
        except Exception:  # not in the local cache under that id: the id is all there is to record
            listing = [model]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()[:32]
