"""SIGKILL in the middle of a checkpoint write leaves the previous checkpoint loadable."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tiue.train import Trainer
from tiue.train.checkpoint import list_checkpoints, read_checkpoint

from pausing_trainer import pausing_train_script

REPO = Path(__file__).resolve().parents[2]
# `tiue train` in a child process whose writer of checkpoint 2 stops halfway (after the EMA
# weights, before the LoRA, the optimizers and state.json) until it is killed.
PAUSING_TRAIN = pausing_train_script(2)


def test_sigkill_mid_write_keeps_the_previous_checkpoint(make_config, tmp_path):
    config = make_config(max_steps=3, checkpoint_every=1, keep_checkpoints=5, output_dir=str(tmp_path / "run"))
    checkpoints = Path(config.output_dir) / "checkpoints"
    env = dict(
        os.environ,
        OMP_NUM_THREADS="2",
        PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    command = [
        sys.executable, "-c", PAUSING_TRAIN, "train", "--teacher", config.teacher, "--captions", config.captions,
        "--output-dir", config.output_dir, "--max-steps", "3", "--batch-size", "2", "--num-steps", "2",
        "--resolution", "32", "--device", "cpu", "--report-to", "none", "--checkpoint-every", "1",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 240
        while not list(checkpoints.glob(".checkpoint-00000002.tmp-*/PAUSED")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the checkpoint writer never paused"
            time.sleep(0.2)
        half_written = next(checkpoints.glob(".checkpoint-00000002.tmp-*"))
        assert (half_written / "student.safetensors").exists() and not (half_written / "state.json").exists()
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()

    assert [step for step, _ in list_checkpoints(checkpoints)] == [1]
    previous = read_checkpoint(checkpoints / "checkpoint-00000001")
    assert previous.state["step"] == 1 and previous.student and previous.lora and previous.optimizers["student"]

    # The run picks up from it (with the command line's settings), and the half-written folder is swept away.
    trainer = Trainer(make_config(
        max_steps=2, checkpoint_every=1, output_dir=config.output_dir, resume="latest", learning_rate=1e-6
    ))
    assert trainer.step == 1
    trainer.fit()
    assert [step for step, _ in list_checkpoints(checkpoints)] == [1, 2]
    assert not list(checkpoints.glob(".checkpoint-*"))
