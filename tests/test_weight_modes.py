"""Weights follow the umask like every other file tiue writes: safetensors' save_file writes its
files 0600 whatever the umask, so without care the checkpoints and final/ of `tiue train` are
unreadable by the group and other users while the JSON beside them is not."""

import os
import stat

import pytest
import torch


@pytest.fixture(params=[0o022, 0o027], ids=["umask022", "umask027"])
def umask(request):
    previous = os.umask(request.param)
    yield request.param
    os.umask(previous)


def modes(folder) -> dict[str, int]:
    return {str(p.relative_to(folder)): stat.S_IMODE(p.stat().st_mode) for p in [folder, *folder.rglob("*")]}


def expected(folder, mask: int) -> dict[str, int]:
    return {name: (0o777 if (folder / name).is_dir() else 0o666) & ~mask for name in modes(folder)}


def test_checkpoint_weights_follow_the_umask(tmp_path, umask):
    from tiue.train.checkpoint import CheckpointContents, write_checkpoint

    weights = {"w": torch.ones(3)}
    path = write_checkpoint(tmp_path / "checkpoints", 5, CheckpointContents(
        student=weights, ema=weights, lora=weights, optimizers={}, rng=[{}], state={"step": 5}))
    assert {"student.safetensors", "ema.safetensors", "lora.safetensors", "state.json"} <= set(modes(path))
    assert modes(path) == expected(path, umask)


def test_saved_pipeline_weights_follow_the_umask(tiny_pipeline_dir, tmp_path, umask):
    """Both the library's save_pretrained and the trainer's final/ (save_pretrained inside an
    atomic_directory, as tiue.train.export writes it)."""
    from tiue import TiUEPipeline
    from tiue.files import atomic_directory

    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.save_pretrained(tmp_path / "saved")
    with atomic_directory(tmp_path / "final") as tmp:
        pipe.save_pretrained(tmp)
        pipe.unet.save_pretrained(tmp / "unet_raw", safe_serialization=True)
    for folder in (tmp_path / "saved", tmp_path / "final"):
        weights = [name for name in modes(folder) if name.endswith(".safetensors")]
        assert "unet/diffusion_pytorch_model.safetensors" in weights
        assert modes(folder) == expected(folder, umask), folder.name
