"""Writing files so that a crash or a kill never leaves a half-written one behind."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "write_text_atomically", "atomic_path", "atomic_directory", "check_writable_folder", "follow_umask",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _follow_umask(path: str | Path, directory: bool) -> None:
    """mkstemp/mkdtemp create 0600/0700 entries; what we publish gets the modes any other
    tool's output gets (0666/0777 less the umask), so other users and servers can read it."""
    os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


def follow_umask(*paths: str | Path) -> None:
    """Give `paths` and everything under them the umask's modes (files keep an executable bit).

    Some writers create private files whatever the umask: safetensors' save_file (which diffusers'
    save_pretrained calls) writes every weight file 0600. Run on what tiue itself just wrote.
    """
    mask = _umask()
    for root in map(Path, paths):
        entries = [root, *root.rglob("*")] if root.is_dir() else [root]
        for entry in entries:
            if entry.is_symlink():
                continue
            if entry.is_dir():
                os.chmod(entry, 0o777 & ~mask)
            elif entry.is_file():
                executable = os.stat(entry).st_mode & 0o111
                os.chmod(entry, (0o777 if executable else 0o666) & ~mask)


@contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    _follow_umask(tmp, directory=False)
    try:
        yield Path(tmp)
        _follow_umask(tmp, directory=False)  # the block may have replaced the file (safetensors does)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomically(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_directory(path: str | Path):
    """Yield a temporary folder beside `path`; it becomes `path` only if the block succeeds.

    An existing `path` is replaced. A kill at any point leaves either the old folder or the
    new one complete, plus at worst a hidden `.NAME.tmp-*` folder that is safe to delete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    _follow_umask(tmp, directory=True)
    try:
        yield tmp
        follow_umask(tmp)  # weights written inside come out 0600 (see follow_umask)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            os.replace(path, old / path.name)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_writable_folder(flag: str, folder: Path) -> None:
    """Fail before any work if `folder` cannot take the output (not after the first batch)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{flag}: exists and is not a folder: {folder}")
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{flag}: cannot write into {existing} (to create or fill {folder})")
