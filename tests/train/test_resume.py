"""Resume: changed method settings are refused (or, when allowed, recorded); the loss history
lives in OUTPUT/history.jsonl, not in every checkpoint."""

import json

import pytest
import torch

from tiue.train import Trainer
from tiue.train.checkpoint import list_checkpoints
from tiue.train.data import CaptionSampler
from tiue.train.monitoring import HistoryFile


@pytest.fixture
def two_step_run(make_config, tmp_path):
    """A run stopped after 2 of 3 steps (24 captions, batch 2: 12 batches per epoch)."""
    out = tmp_path / "run"
    Trainer(make_config(output_dir=str(out), max_steps=2, checkpoint_every=1)).fit()
    return out


@pytest.mark.parametrize("change", [{"lambda_kl": 0.2}, {"seed": 1}, {"lora_loss": "teacher"}, {"guidance_scale": 3.0},
                                    {"num_steps": 3}, {"learning_rate": 1e-5}])
def test_resume_refuses_changed_method_settings(make_config, two_step_run, change):
    (name, value), = change.items()
    with pytest.raises(ValueError, match=rf"--resume: .*checkpoint-00000002 was written with other method settings "
                                         rf"\({name} .* -> {value!r}\); .* pass --allow-setting-changes"):
        Trainer(make_config(output_dir=str(two_step_run), max_steps=3, resume="latest", **change))


def test_resume_may_change_length_and_machinery(make_config, two_step_run):
    trainer = Trainer(make_config(output_dir=str(two_step_run), max_steps=3, resume="latest", checkpoint_every=7,
                                  keep_checkpoints=1, gradient_checkpointing=True, log_every=2))
    assert trainer.step == 2 and trainer.setting_changes == []
    trainer.close()


def test_allowed_changes_are_recorded_and_a_new_seed_keeps_the_epoch_under_way(make_config, two_step_run):
    trainer = Trainer(make_config(output_dir=str(two_step_run), max_steps=3, resume="latest", seed=1,
                                  lambda_kl=0.2, allow_setting_changes=True))
    # Epoch 0 is under way (2 of 12 batches): it keeps its shuffle, so each caption is still seen
    # once in it; the new seed shuffles from epoch 1 on.
    assert torch.equal(trainer.sampler.permutation(0), CaptionSampler(24, 2, seed=0).permutation(0))
    assert torch.equal(trainer.sampler.permutation(1), CaptionSampler(24, 2, seed=1).permutation(1))
    result = trainer.fit()

    recorded = [{"step": 2, "changed": {"lambda_kl": [0.1, 0.2], "seed": [0, 1]}}]
    state = json.loads((result.checkpoint / "state.json").read_text())
    assert state["setting_changes"] == recorded
    assert state["data_seeds"] == [[0, 0], [1, 1]]
    assert json.loads((result.final / "tiue_training.json").read_text())["setting_changes"] == recorded
    markers = [json.loads(line) for line in (two_step_run / "history.jsonl").read_text().splitlines()]
    assert {"resumed_at": 2, "changed": recorded[0]["changed"]} in markers


def test_the_history_is_appended_beside_the_checkpoints_which_stay_small(make_config, tmp_path):
    out = tmp_path / "run"
    trainer = Trainer(make_config(output_dir=str(out), max_steps=3, checkpoint_every=1))
    trainer.fit()
    states = [json.loads((path / "state.json").read_text()) for _, path in list_checkpoints(out / "checkpoints")]
    assert all("history" not in state for state in states)
    sizes = {len(json.dumps(state)) for state in states}
    assert max(sizes) - min(sizes) < 20  # no per-step growth
    lines = HistoryFile(out / "history.jsonl").read()
    assert lines == [json.loads(json.dumps(r)) for r in trainer.history.records]
    assert [r["step"] for r in lines] == [1, 2, 3]


def test_a_checkpoint_of_the_older_format_resumes_with_its_history(make_config, two_step_run):
    # Written by an older tiue: the history inside state.json, no history.jsonl.
    history = HistoryFile(two_step_run / "history.jsonl").read()
    (two_step_run / "history.jsonl").unlink()
    state_file = two_step_run / "checkpoints" / "checkpoint-00000002" / "state.json"
    state = json.loads(state_file.read_text())
    state["history"] = history
    for key in ("overflow_total", "data_seeds", "setting_changes"):
        del state[key]
    del state["config"]["kl_reference_batch_size"]  # a setting older checkpoints do not know
    state_file.write_text(json.dumps(state))

    # Its lambda_kl weighed the KL sum at its own batch (2): the same method needs that reference.
    with pytest.raises(ValueError, match=r"kl_reference_batch_size 2 -> 8"):
        Trainer(make_config(output_dir=str(two_step_run), max_steps=3, resume="latest"))
    trainer = Trainer(make_config(output_dir=str(two_step_run), max_steps=3, resume="latest", kl_reference_batch_size=2))
    assert trainer.step == 2
    assert [r["step"] for r in trainer.history.records] == [1, 2]
    assert trainer.history.records == history
    trainer.close()
