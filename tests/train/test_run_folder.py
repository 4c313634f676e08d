"""Nothing a user made is lost: finished runs, a folder two trainers share, resume lines, empty paths."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiue.train import Trainer, TrainConfig
from tiue.train.checkpoint import list_checkpoints
from tiue.train.folder_lock import LOCK_NAME, FolderLock

from pausing_trainer import pausing_train_script

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished_run(tiny_pipeline_dir, captions_file, tmp_path_factory):
    """A finished one-step `tiue train` run: checkpoints/ and final/."""
    output = tmp_path_factory.mktemp("finished") / "run"
    Trainer(TrainConfig(
        teacher=str(tiny_pipeline_dir), captions=str(captions_file), output_dir=str(output), max_steps=1,
        batch_size=2, num_steps=2, resolution=32, device="cpu", report_to="none", validation_prompts=(),
    )).fit()
    assert (output / "final" / "model_index.json").is_file()
    return output


def copy_of(run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    return copy


def test_world_train_refuses_a_folder_holding_a_tiue_train_run(finished_run, tmp_path):
    from tiue.world.recipes import load_recipe, run_recipe

    run = copy_of(finished_run, tmp_path)
    before = (run / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    recipe = load_recipe(REPO / "configs/shapes-features.yaml")
    small = {"output_dir": str(run), "dataset_size": 16, "features.steps": 1, "features.batch_size": 4}
    with pytest.raises(ValueError, match=r"--output-dir: .* holds another run \(final, checkpoints/\) that is not "
                                         r"this recipe's \(no recipe.yaml\)"):
        run_recipe(recipe, small)
    assert (run / "final" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    assert not (run / "recipe.yaml").exists()


def test_resume_latest_refuses_a_finished_run_without_checkpoints(finished_run, tmp_path, make_config):
    run = copy_of(finished_run, tmp_path)
    shutil.rmtree(run / "checkpoints")
    before = (run / "final" / "tiue_training.json").read_text()
    with pytest.raises(ValueError, match=r"--resume: .* holds a finished run \(final/\) and no checkpoint to "
                                         r"continue; pass --overwrite"):
        Trainer(make_config(output_dir=str(run), resume="latest"))
    assert (run / "final" / "tiue_training.json").read_text() == before


def test_resume_latest_still_starts_fresh_in_an_empty_folder(make_config, tmp_path):
    trainer = Trainer(make_config(output_dir=str(tmp_path / "new"), resume="latest"))
    assert trainer.step == 0
    trainer.close()


@pytest.mark.parametrize("flag, value", [("output_dir", ""), ("student", ""), ("teacher", " "), ("captions", ""),
                                         ("resume", ""), ("clip_model", "")])
def test_empty_paths_are_refused_not_taken_as_the_default(make_config, flag, value):
    with pytest.raises(ValueError, match=f"--{flag.replace('_', '-')}: expected a path or name, got an empty string"):
        make_config(**{flag: value}).check()


def test_the_cli_refuses_an_empty_output_dir_in_one_line(tmp_path, captions_file, tiny_pipeline_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "tiue", "train", "--teacher", str(tiny_pipeline_dir), "--captions", str(captions_file),
         "--output-dir", ""],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"),
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        "tiue train: error: --output-dir: expected a path or name, got an empty string ''"
    ]
    assert list(tmp_path.iterdir()) == []  # nothing written into the current folder


# `tiue train` whose writer of checkpoint 1 stops halfway (after the EMA weights) for two minutes.
PAUSING_TRAIN = pausing_train_script(1)


def _train_process(args: list[str], cwd: Path, pause: bool = False) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                       OMP_NUM_THREADS="1")
    start = [sys.executable, "-c", PAUSING_TRAIN] if pause else [sys.executable, "-m", "tiue"]
    return subprocess.Popen([*start, "train", *args], cwd=cwd, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_second_trainer_on_a_folder_in_use_fails_at_once_and_a_killed_ones_lock_is_gone(
    tmp_path, captions_file, tiny_pipeline_dir
):
    run = tmp_path / "run"
    common = ["--teacher", str(tiny_pipeline_dir), "--captions", str(captions_file), "--output-dir", str(run),
              "--max-steps", "3", "--batch-size", "2", "--num-steps", "2", "--resolution", "32", "--device", "cpu",
              "--report-to", "none", "--checkpoint-every", "1"]
    # The first trainer pauses halfway through writing checkpoint 1: it is surely mid-run.
    first = _train_process(common, tmp_path, pause=True)
    try:
        deadline = time.monotonic() + 240
        while not list((run / "checkpoints").glob(".checkpoint-00000001.tmp-*/PAUSED")):
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "the first trainer never reached its first checkpoint"
            time.sleep(0.5)
        second = _train_process(common + ["--overwrite"], tmp_path)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 1
        assert err.strip().splitlines() == [
            f"tiue train: error: --output-dir: {run} is in use by another tiue train (pid {first.pid}); wait for it "
            "to end, or pick another output folder"
        ]
        assert first.poll() is None  # untouched: --overwrite deleted nothing of the running trainer's
        assert (run / "checkpoints").is_dir()
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    # Killed, it holds nothing: the next trainer takes the folder at once.
    lock = FolderLock(run)
    assert lock.held and (run / LOCK_NAME).read_text().strip() == str(os.getpid())
    lock.release()


def test_resuming_an_older_checkpoint_sets_the_newer_ones_aside_and_latest_follows_the_resumed_line(
    make_config, tmp_path
):
    out = tmp_path / "run"
    Trainer(make_config(output_dir=str(out), max_steps=3, checkpoint_every=1, keep_checkpoints=3)).fit()
    checkpoints = out / "checkpoints"
    assert [step for step, _ in list_checkpoints(checkpoints)] == [1, 2, 3]
    old_three = (checkpoints / "checkpoint-00000003" / "student.safetensors").read_bytes()

    # Back to step 1 and on for one step, keeping two checkpoints: the resumed line is 1, 2'.
    resumed = Trainer(make_config(output_dir=str(out), max_steps=2, checkpoint_every=1, keep_checkpoints=2,
                                  resume=str(checkpoints / "checkpoint-00000001")))
    resumed.fit()
    assert [step for step, _ in list_checkpoints(checkpoints)] == [1, 2]
    aside = checkpoints / "abandoned-after-00000001"
    assert [step for step, _ in list_checkpoints(aside)] == [2, 3]  # kept, not pruned
    assert (aside / "checkpoint-00000003" / "student.safetensors").read_bytes() == old_three

    # --resume latest continues the resumed line (its step 2), not the abandoned step 3.
    later = Trainer(make_config(output_dir=str(out), max_steps=3, resume="latest"))
    assert later.step == 2 and later.last_checkpoint == checkpoints / "checkpoint-00000002"
    assert [r["step"] for r in later.history.records] == [1, 2]
    later.close()
