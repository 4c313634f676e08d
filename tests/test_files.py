"""Written whole or not at all, and readable as any other tool's output is."""

import os
import stat

import pytest

from tiue.files import atomic_directory, atomic_path, write_text_atomically


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_and_folders_follow_the_umask(tmp_path, umask_022):
    write_text_atomically(tmp_path / "a.json", "{}")
    with atomic_path(tmp_path / "b.png", suffix=".png") as tmp:
        tmp.write_bytes(b"png")
    with atomic_directory(tmp_path / "final") as tmp:
        (tmp / "inside.txt").write_text("x")
    assert mode(tmp_path / "a.json") == mode(tmp_path / "b.png") == 0o644
    assert mode(tmp_path / "final") == 0o755


def test_a_failed_write_leaves_the_old_file_and_no_temporaries(tmp_path):
    write_text_atomically(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed mid-write")
    assert (tmp_path / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]
