"""What every setting of a shapes-world recipe accepts: one rule per key of each section,
checked (with the --set values applied) before anything is drawn, trained or written.

Errors name the key as --set spells it (teacher.learning_rate, world.resolution, seed).
Bounds past the world's own sizes are there to refuse typos and hostile values in one line
instead of a run that exhausts memory or never ends.
"""

from __future__ import annotations

from typing import Any

from tiue.schedule import TIMESTEP_SPACINGS
from tiue.settings_checks import Choice, Flag, Integer, Integers, Number, NumberRange, Rule, Text, check_settings

__all__ = ["JOBS", "SECTIONS", "RULES", "check_recipe"]

JOBS = ("teacher", "features")
SECTIONS = {"teacher": ("world", "text_encoder", "vae", "teacher", "teacher_finetune"), "features": ("world", "features")}
# The teacher UNet's architecture: the fine-tuning stage keeps the first stage's UNet.
TEACHER_ARCHITECTURE = ("block_out_channels", "layers_per_block", "attention_heads")

STEPS = 10**7
SEED = Integer(0, 2**32 - 1)
# 0 is allowed: a stage that keeps its starting weights (a test of where a stage starts) is fine.
LEARNING_RATE = Number(0, 1)
PROBABILITY = Number(0, 1)


def _teacher_rules() -> dict[str, Rule]:
    from tiue.world.teacher import PREDICTION_TYPES

    return {
        # diffusers' UNet normalises in groups of 32 channels.
        "block_out_channels": Integers(32, 2048, max_length=6, multiple=32),
        "layers_per_block": Integer(1, 8),
        "attention_heads": Integer(1, 64),
        "steps": Integer(1, STEPS),
        "batch_size": Integer(1, 4096),
        "learning_rate": LEARNING_RATE,
        "warmup_steps": Integer(0, STEPS),
        "caption_dropout": PROBABILITY,
        "ema_decay": PROBABILITY,
        "seed": SEED,
        "prediction_type": Choice(PREDICTION_TYPES),
        "zero_terminal_snr": Flag(),
        "timestep_spacing": Choice(TIMESTEP_SPACINGS),
    }


def _rules() -> dict[str, dict[str, Rule]]:
    teacher = _teacher_rules()
    return {
        "": {
            "job": Choice(JOBS),
            "output_dir": Text(optional=True),
            "seed": SEED,
            "num_threads": Integer(1, 1024, optional=True),
            "dataset_size": Integer(1, 10**6),  # images held in memory: 10**6 at 32 px is 12 GB
        },
        "world": {
            "resolution": Integer(8, 256),
            "two_shape_probability": PROBABILITY,
            "size_word_probability": PROBABILITY,
            "background_word_probability": PROBABILITY,
            # fractions of the image side; a radius past 0.5 leaves no room for the centre
            "small_radius": NumberRange(0, 0.5, low_open=True),
            "large_radius": NumberRange(0, 0.5, low_open=True),
            "supersample": Integer(1, 16),
        },
        "text_encoder": {"hidden_size": Integer(1, 4096), "num_layers": Integer(1, 48), "num_heads": Integer(1, 64)},
        "vae": {
            "block_out_channels": Integers(8, 1024, max_length=6, multiple=8),  # groups of 8 channels
            "layers_per_block": Integer(1, 8),
            "steps": Integer(1, STEPS),
            "batch_size": Integer(1, 4096),
            "learning_rate": LEARNING_RATE,
            "kl_weight": Number(0, 10**6),
            "seed": SEED,
        },
        "teacher": teacher,
        "teacher_finetune": {k: v for k, v in teacher.items() if k not in TEACHER_ARCHITECTURE},
        "features": {
            "channels": Integers(1, 1024, max_length=8),
            "feature_dim": Integer(1, 4096),
            "steps": Integer(1, STEPS),
            "batch_size": Integer(1, 4096),
            "learning_rate": LEARNING_RATE,
            "seed": SEED,
        },
    }


RULES: dict[str, dict[str, Rule]] = {}


def check_recipe(recipe: Any, source: str = "the recipe") -> dict[str, Any]:
    """The recipe with every value checked by its rule and converted (a "1e-3" string as 1e-3);
    raises a one-line ValueError/TypeError naming the key, the value and what is accepted."""
    if not RULES:
        RULES.update(_rules())
    if not isinstance(recipe, dict):
        raise ValueError(f"{source}: expected a mapping of settings, got {type(recipe).__name__}")
    job = recipe.get("job")
    if job not in JOBS:
        raise ValueError(f"job: expected one of {', '.join(JOBS)} in {source}, got {job!r:.80}")
    accepted = sorted(set(RULES[""]) | set(SECTIONS[job]))
    unknown = sorted(str(key) for key in recipe if key not in accepted)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown} for job {job!r}; accepted: {accepted}")
    checked = check_settings({k: v for k, v in recipe.items() if k in RULES[""]}, RULES[""])
    for section in SECTIONS[job]:
        if section not in recipe:
            continue
        values = recipe[section]
        if values is None:
            checked[section] = None
            continue
        if not isinstance(values, dict):
            raise TypeError(f"{section}: expected a mapping of settings (or nothing), got {type(values).__name__}")
        rules = RULES[section]
        if section == "teacher_finetune":
            architecture = sorted(set(TEACHER_ARCHITECTURE) & set(values))
            if architecture:
                raise ValueError(f"teacher_finetune: {architecture} belong to the teacher section (the stage keeps its UNet)")
        unknown = sorted(str(key) for key in values if key not in rules)
        if unknown:
            raise ValueError(f"{section}: unknown settings {unknown}; accepted: {sorted(rules)}")
        checked[section] = check_settings(values, rules, lambda key, section=section: f"{section}.{key}")
    _check_together(checked)
    return checked


def _check_together(recipe: dict[str, Any]) -> None:
    """Settings that must agree with each other."""
    from tiue.data.shapes import WorldConfig
    from inspect import signature

    from tiue.world.teacher import TeacherSettings
    from tiue.world.text_encoder import build_world_text_encoder
    from tiue.world.vae import VAESettings

    world = recipe.get("world") or {}
    resolution = world.get("resolution", WorldConfig.resolution)
    if recipe["job"] == "teacher":
        text = dict({k: p.default for k, p in signature(build_world_text_encoder).parameters.items()},
                    **(recipe.get("text_encoder") or {}))
        hidden, heads = text["hidden_size"], text["num_heads"]
        if hidden % heads:
            raise ValueError(f"text_encoder.hidden_size: expected a multiple of text_encoder.num_heads ({heads}), got {hidden}")
        levels = len((recipe.get("vae") or {}).get("block_out_channels", VAESettings.block_out_channels))
        if resolution % 2 ** (levels - 1):
            raise ValueError(
                f"world.resolution: expected a multiple of {2 ** (levels - 1)} (the VAE's {levels} levels halve it "
                f"{levels - 1} times), got {resolution}"
            )
        teacher = recipe.get("teacher") or {}
        heads = teacher.get("attention_heads", TeacherSettings.attention_heads)
        channels = teacher.get("block_out_channels", TeacherSettings.block_out_channels)
        if any(c % heads for c in channels):
            raise ValueError(
                f"teacher.attention_heads: expected a divisor of every teacher.block_out_channels {list(channels)}, got {heads}"
            )
        for section in ("teacher", "teacher_finetune"):
            values = recipe.get(section) or {}
            prediction = values.get("prediction_type", TeacherSettings.prediction_type)
            if values.get("zero_terminal_snr", False) and prediction == "epsilon":
                # At alphabar = 0 an epsilon prediction says nothing about x0.
                raise ValueError(f"{section}.zero_terminal_snr: needs {section}.prediction_type v_prediction, got epsilon")
