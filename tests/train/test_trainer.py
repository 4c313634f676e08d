"""Trainer runs on the tiny teacher: what changes, resume, non-finite steps, signals."""

import os
import signal
import threading

import pytest
import torch
from safetensors.torch import load_file

from tiue.train import NonFiniteLossError, Trainer
from tiue.train.checkpoint import list_checkpoints, read_checkpoint
from tiue.train.models import lora_state_dict


def teacher_file_weights(teacher_dir):
    return load_file(teacher_dir / "unet" / "diffusion_pytorch_model.safetensors")


def test_teacher_is_bitwise_unchanged_and_student_and_lora_move(make_config, tiny_pipeline_dir):
    trainer = Trainer(make_config(max_steps=2))
    lora_before = {k: v.clone() for k, v in lora_state_dict(trainer.fake_score_unet).items()}
    trainer.fit()

    on_disk = teacher_file_weights(tiny_pipeline_dir)
    base = {
        n.replace(".base_layer", ""): p
        for n, p in trainer.fake_score_unet.named_parameters()
        if ".fake_score." not in n
    }
    assert set(base) == set(on_disk)
    assert all(torch.equal(base[n], on_disk[n]) for n in on_disk), "teacher weights changed"

    student = trainer.student_unet.state_dict()
    moved = [n for n in on_disk if not torch.equal(student[n], on_disk[n])]
    assert len(moved) > len(on_disk) // 2, f"only {len(moved)} student tensors changed"
    lora_after = lora_state_dict(trainer.fake_score_unet)
    assert any(not torch.equal(lora_before[n], lora_after[n]) for n in lora_after)


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def optimizer_tensors(optimizer) -> dict:
    return {
        f"{index}.{name}": value.reshape(-1)
        for index, state in optimizer.state_dict()["state"].items()
        for name, value in state.items()
    }


def test_stop_at_2_and_resume_to_4_equals_a_straight_4_step_run(make_config, tmp_path):
    straight = Trainer(make_config(max_steps=4, output_dir=str(tmp_path / "straight")))
    straight.fit()

    first = Trainer(make_config(max_steps=2, output_dir=str(tmp_path / "resumed")))
    first.fit()
    saved = read_checkpoint(first.last_checkpoint)
    resumed = Trainer(make_config(max_steps=4, output_dir=str(tmp_path / "resumed"), resume="latest"))
    # The checkpoint gives back the student AND the LoRA, each to its own model.
    assert max_difference(resumed.student_unet.state_dict(), first.student_unet.state_dict()) == 0
    assert max_difference(lora_state_dict(resumed.fake_score_unet), lora_state_dict(first.fake_score_unet)) == 0
    assert max_difference(saved.student, saved.ema) > 0  # EMA stored apart from the raw weights
    assert resumed.step == 2
    resumed.fit()

    assert resumed.step == straight.step == 4
    pairs = {
        "student": (resumed.student_unet.state_dict(), straight.student_unet.state_dict()),
        "ema": (resumed.ema.state_dict(), straight.ema.state_dict()),
        "lora": (lora_state_dict(resumed.fake_score_unet), lora_state_dict(straight.fake_score_unet)),
        "student optimizer": (optimizer_tensors(resumed.student_optimizer), optimizer_tensors(straight.student_optimizer)),
        "lora optimizer": (optimizer_tensors(resumed.lora_optimizer), optimizer_tensors(straight.lora_optimizer)),
    }
    for name, (a, b) in pairs.items():
        assert max_difference(a, b) <= 1e-6, name
    assert max_difference(straight.student_unet.state_dict(), first.student_unet.state_dict()) > 1e-6
    assert [r["step"] for r in resumed.history.records] == [1, 2, 3, 4]
    assert resumed.history.records[3]["loss/kl"] == pytest.approx(straight.history.records[3]["loss/kl"], abs=1e-6)


def test_nonfinite_steps_are_skipped_then_stop_the_run_leaving_the_last_checkpoint(make_config):
    Trainer(make_config(max_steps=1)).fit()
    trainer = Trainer(make_config(max_steps=6, resume="latest", max_consecutive_nonfinite=2))
    good = trainer.last_checkpoint
    lora_before = {k: v.clone() for k, v in lora_state_dict(trainer.fake_score_unet).items()}
    with torch.no_grad():  # a broken teacher weight: the LoRA loss turns NaN
        trainer.fake_score_unet.conv_in.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match="--max-consecutive-nonfinite: 2 consecutive steps") as error:
        trainer.fit()
    assert str(good) in str(error.value)
    assert trainer.nonfinite_total == 2
    # Skipped: the LoRA never stepped on a NaN loss; the last good checkpoint is untouched.
    assert max_difference(lora_state_dict(trainer.fake_score_unet), lora_before) == 0
    assert [step for step, _ in list_checkpoints(good.parent)] == [1]
    saved = read_checkpoint(good)
    assert saved.state["step"] == 1
    assert all(torch.isfinite(v).all() for v in saved.student.values())


def test_sigterm_writes_a_checkpoint_and_stops_cleanly(make_config):
    trainer = Trainer(make_config(max_steps=500))
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # guard until fit installs its own
    timer = threading.Timer(2.0, os.kill, (os.getpid(), signal.SIGTERM))
    try:
        timer.start()
        result = trainer.fit()
    finally:
        timer.cancel()
        signal.signal(signal.SIGTERM, previous)
    assert result.stopped_early and result.final is None
    assert 1 <= result.step < 500
    assert result.checkpoint.name == f"checkpoint-{result.step:08d}"
    assert read_checkpoint(result.checkpoint).state["step"] == result.step


class _Payload:
    """Unpickling this calls os.system: a checkpoint file must never be able to do that."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_a_checkpoint_is_refused_without_running(make_config, tmp_path):
    Trainer(make_config(max_steps=1)).fit()
    checkpoint = list_checkpoints(tmp_path / "run" / "checkpoints")[-1][1]
    marker = tmp_path / "payload-ran"
    torch.save({"student": _Payload(marker)}, checkpoint / "optimizers.pt")
    with pytest.raises(ValueError, match=f"--resume: cannot read checkpoint {checkpoint}"):
        read_checkpoint(checkpoint)
    assert not marker.exists()
    assert not any(p.suffix == ".pt" and p.name != "optimizers.pt" for p in checkpoint.iterdir())


def test_resume_latest_skips_a_damaged_newest_checkpoint_with_a_warning(make_config, tmp_path, caplog):
    Trainer(make_config(max_steps=2, checkpoint_every=1, keep_checkpoints=2)).fit()
    found = list_checkpoints(tmp_path / "run" / "checkpoints")
    assert [step for step, _ in found] == [1, 2]
    newest = found[-1][1] / "student.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated, as by a full disk
    with caplog.at_level("WARNING", logger="tiue.train"):
        resumed = Trainer(make_config(max_steps=3, resume="latest", checkpoint_every=1, keep_checkpoints=2))
    assert resumed.step == 1 and resumed.last_checkpoint == found[0][1]
    assert f"skipping damaged checkpoint {found[-1][1]}" in caplog.text


def test_a_finished_run_is_never_trained_over_without_resume_or_overwrite(make_config, tmp_path):
    Trainer(make_config(max_steps=1)).fit()
    final = tmp_path / "run" / "final" / "unet" / "diffusion_pytorch_model.safetensors"
    before = final.read_bytes()
    with pytest.raises(ValueError, match="--output-dir: .* already holds a run \\(final, checkpoints\\); pass --resume latest"):
        Trainer(make_config(max_steps=1, seed=1))
    assert final.read_bytes() == before
    with pytest.raises(ValueError, match="--overwrite: cannot be combined with --resume"):
        Trainer(make_config(max_steps=1, overwrite=True, resume="latest"))
    trainer = Trainer(make_config(max_steps=1, seed=1, overwrite=True))
    assert not (tmp_path / "run" / "final").exists() and not trainer.checkpoint_dir.exists()
    trainer.fit()
    assert final.read_bytes() != before


def test_an_embedded_model_name_works_as_the_teacher(make_config, tmp_path):
    trainer = Trainer(make_config(teacher="shapes-teacher", max_steps=1, resolution=None, batch_size=2,
                                  output_dir=str(tmp_path / "embedded")))
    assert trainer.resolution == 32
    assert trainer.fit().final.is_dir()
