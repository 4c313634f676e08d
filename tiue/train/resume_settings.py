"""What a resumed run may change, and what it may not without saying so.

A checkpoint records the settings it was written with. Resuming with other method settings
(seed, --lambda-kl, --lora-loss, guidance, K, learning rates, ...) would silently train a
different method from the checkpoint on, so it is refused, as `tiue world train --resume`
refuses a changed recipe. --allow-setting-changes accepts the changes: they are logged, and
recorded in every later checkpoint, in OUTPUT/history.jsonl and in final/tiue_training.json.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FREE_ON_RESUME", "changed_settings", "describe_changes", "data_seed_schedule"]

# How long, how often, where to log, on what hardware, how to save memory: a resumed run may
# change these freely. The per-process batch and process count are checked apart (the data
# order depends on them); --student and --lora-init only shape a run's first step.
FREE_ON_RESUME = frozenset({
    "max_steps", "epochs", "checkpoint_every", "keep_checkpoints", "resume", "overwrite",
    "allow_setting_changes", "max_consecutive_nonfinite", "validate_every", "validation_prompts",
    "report_to", "log_every", "device", "push_to_hub", "hub_model_id", "output_dir",
    "gradient_checkpointing", "allow_tf32", "batch_size", "global_batch_size", "student", "lora_init",
})


def changed_settings(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, list]:
    """{name: [checkpoint's value, this run's value]} for every method setting that differs.
    A setting the checkpoint does not know (added to tiue later) is compared only when
    the caller filled in the value it had in effect."""
    return {
        name: [saved[name], current.get(name)]
        for name in sorted(saved)
        if name not in FREE_ON_RESUME and name in current and saved[name] != current[name]
    }


def describe_changes(changes: dict[str, list]) -> str:
    return ", ".join(f"{name} {old!r} -> {new!r}" for name, (old, new) in changes.items())


def data_seed_schedule(schedule: list[list[int]], new_seed: int, epoch: int, batch_in_epoch: int) -> list[list[int]]:
    """The [first epoch, seed] pairs of the data order after a resume with `new_seed`: an epoch
    under way keeps its shuffle (its remaining captions are the ones it has not seen yet); the new
    seed shuffles from the next epoch on (this one, if the resume is at its start)."""
    if schedule[-1][1] == new_seed:
        return schedule
    first = epoch if batch_in_epoch == 0 else epoch + 1
    return [entry for entry in schedule if entry[0] < first] + [[first, new_seed]]
