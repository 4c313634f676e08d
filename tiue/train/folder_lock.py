"""One trainer per output folder: an advisory lock held for the run's life.

Two trainers writing one --output-dir would mix their checkpoints and replace each other's
final/. The first one takes an exclusive `flock` on OUTPUT/.tiue-train.lock (and writes its pid
there); a second one fails at once, naming the folder and the holder's pid. The kernel drops a
flock when its holder dies, however it dies, so a killed run never blocks the next one; the lock
file itself is left in place (deleting it would let a third trainer lock a new file while a
second still holds the old one).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

__all__ = ["FolderLock", "FolderInUseError", "LOCK_NAME"]

LOCK_NAME = ".tiue-train.lock"


class FolderInUseError(ValueError):
    """Another live process holds the output folder's lock."""


class FolderLock:
    """`FolderLock(folder, flag)`: lock `folder` now (FolderInUseError if taken); release() or
    the process's end frees it."""

    def __init__(self, folder: str | Path, flag: str = "--output-dir"):
        self._fd: int | None = None
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._created = not self.folder.exists()  # by this lock: undone by discard()
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise FolderInUseError(
                f"{flag}: {self.folder} is in use by another tiue train (pid {holder}); wait for it to end, "
                "or pick another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the last descriptor drops the flock

    def discard(self) -> None:
        """Release, and remove the folder again if this lock created it and nothing else was written
        there (a run that failed before it began leaves nothing behind)."""
        if self._fd is None:
            return
        if self._created and [p.name for p in self.folder.iterdir()] == [LOCK_NAME]:
            self.path.unlink()
            self.release()
            self.folder.rmdir()
        else:
            self.release()

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            self.release()
