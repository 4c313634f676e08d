"""What every `tiue train` setting accepts: one rule per TrainConfig field, checked before any
model loads, whether the value came from a flag, a YAML file or the Python API.

Bounds past the method's own (a learning rate above 1, a batch of a million prompts, a
billion steps) are there to refuse typos and hostile values in one line, instead of a run that
diverges, exhausts memory, or never ends. Checks that need the teacher (the resolution against
its VAE, the VSD timesteps against its schedule) stay where the teacher is read.
"""

from __future__ import annotations

import dataclasses

from tiue.schedule import TIMESTEP_SPACINGS
from tiue.settings_checks import Choice, Flag, Integer, Number, Rule, Text, TextList, check_settings
from tiue.train.config import (
    KL_TARGETS, LORA_INITS, LORA_LOSSES, LR_SCHEDULERS, MIXED_PRECISIONS, NULL_PROMPT_SCOPES, REPORT_TO, flag_name,
)

__all__ = ["TRAIN_SETTINGS", "check_train_settings"]

STEPS = 10**9  # optimizer steps, warm-up, intervals: a billion is past any run
SEED = 2**32 - 1  # numpy's and accelerate's seeding take 32 bits
WEIGHT = 10**6  # loss weights and the LoRA alpha: finite, and far from float overflow


# teacher and captions are required, which TrainConfig.check says in its own words.
TRAIN_SETTINGS: dict[str, Rule] = {
    "teacher": Text(optional=True),
    "student": Text(optional=True),
    "revision": Text(optional=True),
    "variant": Text(optional=True),
    "captions": Text(optional=True),
    "caption_field": Text(optional=True),
    "output_dir": Text(),
    "max_steps": Integer(1, STEPS, optional=True),
    "epochs": Integer(1, 10**6),
    "batch_size": Integer(1, 65536),
    "global_batch_size": Integer(1, 2**20, optional=True),
    "gradient_accumulation_steps": Integer(1, 10**4),
    "resolution": Integer(8, 16384, optional=True),
    "num_steps": Integer(1, 1000),  # K decoder steps within a 1000-step training schedule
    "lambda_kl": Number(0, WEIGHT),  # per sample of kl_reference_batch_size prompts (docs/training.md)
    "kl_reference_batch_size": Integer(1, 65536),
    "kl_target": Choice(KL_TARGETS),
    "guidance_scale": Number(0, 100),
    "learning_rate": Number(0, 1, low_open=True),
    "learning_rate_lora": Number(0, 1, low_open=True),
    "lr_warmup_steps": Integer(0, STEPS),
    "lr_scheduler": Choice(LR_SCHEDULERS),
    "lora_rank": Integer(1, 4096),
    "lora_alpha": Number(0, WEIGHT, low_open=True),
    "lora_targets": TextList(min_length=1),
    "ema_decay": Number(0, 1),
    # A huge finite norm switches clipping off on purpose; inf or nan is a typo or worse.
    "max_grad_norm": Number(0, 10**12, low_open=True),
    "vsd_min_timestep": Integer(0, 10**5),
    "vsd_max_timestep": Integer(0, 10**5),  # and below the teacher's training timesteps, checked with it
    "lora_null_prompt_probability": Number(0, 1),
    "lora_null_prompt_scope": Choice(NULL_PROMPT_SCOPES),
    "lora_init": Choice(LORA_INITS),
    "lora_loss": Choice(LORA_LOSSES),
    "timestep_spacing": Choice(TIMESTEP_SPACINGS, optional=True),
    "clip_model": Text(optional=True),
    "lambda_clip": Number(0, WEIGHT),
    "clip_margin": Number(0, 2),  # tau in relu(tau - cos), cos in [-1, 1]
    "mixed_precision": Choice(MIXED_PRECISIONS),
    "half_precision_teacher": Flag(),
    "gradient_checkpointing": Flag(),
    "allow_tf32": Flag(),
    "use_8bit_adam": Flag(),
    "checkpoint_every": Integer(1, STEPS),
    "keep_checkpoints": Integer(1, 10**6),
    "resume": Text(optional=True),
    "overwrite": Flag(),
    "allow_setting_changes": Flag(),
    "max_consecutive_nonfinite": Integer(1, STEPS),
    "validate_every": Integer(0, STEPS),
    "validation_prompts": TextList(),
    "report_to": Choice(REPORT_TO, optional=True),
    "log_every": Integer(1, STEPS),
    "seed": Integer(0, SEED),
    "device": Choice(("cpu", "cuda"), optional=True),
    "push_to_hub": Flag(),
    "hub_model_id": Text(optional=True),
    "hub_token": Text(optional=True, secret=True),
}


def _fallback_rule(field: dataclasses.Field) -> Rule | None:
    """A field added without a rule still gets its kind and finiteness checked (by its default's
    type); tests/test_hostile_training_inputs.py asks for a real rule for each."""
    default = field.default
    if isinstance(default, bool):
        return Flag()
    if isinstance(default, int):
        return Integer(-STEPS, STEPS)
    if isinstance(default, float):
        return Number(-WEIGHT, WEIGHT)
    return None


def check_train_settings(config) -> None:
    """Check every field of a TrainConfig by its rule, in field order, and store the converted
    values (a "1e-6" string as 1e-6, a list of prompts as a tuple). Raises a one-line
    ValueError/TypeError naming the flag."""
    fields = dataclasses.fields(config)
    rules = {f.name: TRAIN_SETTINGS.get(f.name) or _fallback_rule(f) for f in fields}
    rules = {name: rule for name, rule in rules.items() if rule is not None}
    values = check_settings({f.name: getattr(config, f.name) for f in fields}, rules, flag_name)
    for name, value in values.items():
        if value is not getattr(config, name):
            object.__setattr__(config, name, value)
    if config.vsd_min_timestep > config.vsd_max_timestep:
        raise ValueError(
            f"{flag_name('vsd_max_timestep')}: expected >= {flag_name('vsd_min_timestep')} ({config.vsd_min_timestep}), "
            f"got {config.vsd_max_timestep}"
        )
