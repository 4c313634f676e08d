"""TrainConfig: every setting of a distillation run, from defaults, a YAML file and flags.

Precedence is defaults < YAML < command-line flags. Defaults follow the official recipe (docs/training.md, the
paper's setup). `validate()` checks what can be checked before any model is loaded; each
error names the flag, the value received and what is accepted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiue.schedule import TIMESTEP_SPACINGS

__all__ = [
    "TrainConfig", "load_yaml_config", "flag_name", "MIXED_PRECISIONS", "REPORT_TO", "NULL_PROMPT_SCOPES",
    "LORA_INITS", "TIMESTEP_SPACINGS",
]

MIXED_PRECISIONS = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard")
# The LoRA loss's null prompt: one draw for the whole batch (the official script) or one per sample.
NULL_PROMPT_SCOPES = ("batch", "sample")
# "default": peft's init (A Kaiming-uniform, B zero; the official script); "gaussian": A ~ N(0, 1/r).
LORA_INITS = ("default", "gaussian")

DEFAULT_VALIDATION_PROMPTS = (
    "a photograph of an astronaut riding a horse",
    "a red fox in the snow, golden hour",
    "a bowl of ramen, studio lighting",
    "an oil painting of a lighthouse in a storm",
)


def flag_name(field_name: str) -> str:
    """The command-line spelling of a config field: learning_rate -> --learning-rate."""
    return "--" + field_name.replace("_", "-")


@dataclass
class TrainConfig:
    # What to distil, from what.
    teacher: str | None = None
    student: str | None = None  # default: the teacher's UNet weights
    captions: str | None = None
    caption_field: str | None = None  # .jsonl field, dotted for nesting; None = auto-detect
    output_dir: str = "runs/tiue"

    # How long, how big.
    max_steps: int | None = None  # optimizer steps; None = run --epochs
    epochs: int = 1
    batch_size: int = 8  # per process
    global_batch_size: int | None = None  # alternative to batch_size: across all processes
    gradient_accumulation_steps: int = 1
    resolution: int | None = None  # pixels; None = the teacher UNet's sample_size * VAE factor

    # The method (docs/training.md).
    num_steps: int = 4  # K
    lambda_kl: float = 0.1
    guidance_scale: float = 4.5
    learning_rate: float = 1e-6
    learning_rate_lora: float = 1e-3
    lr_warmup_steps: int = 0
    lora_rank: int = 64
    lora_alpha: float = 108.0
    lora_targets: tuple[str, ...] = ("to_q", "to_v")
    ema_decay: float = 0.9999
    max_grad_norm: float = 1.0
    vsd_min_timestep: int = 20
    vsd_max_timestep: int = 980
    lora_null_prompt_probability: float = 0.1
    lora_null_prompt_scope: str = "batch"
    lora_init: str = "default"
    timestep_spacing: str | None = None  # the student's K timesteps; None = the teacher scheduler's own
    clip_model: str | None = None
    lambda_clip: float = 0.0
    clip_margin: float = 1.0  # tau in relu(tau - cos); 1.0 makes it the plain 1 - cos

    # Machinery.
    mixed_precision: str = "no"
    half_precision_teacher: bool = False  # frozen UNet weights in the mixed dtype (official: fp32)
    gradient_checkpointing: bool = False
    allow_tf32: bool = True
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    overwrite: bool = False  # start over in an output folder that holds an earlier run
    max_consecutive_nonfinite: int = 10
    validate_every: int = 0  # 0 = only at the end
    validation_prompts: tuple[str, ...] = DEFAULT_VALIDATION_PROMPTS
    report_to: str | None = None  # None = tensorboard when importable, else none
    log_every: int = 1
    seed: int = 0
    device: str | None = None

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
        """Defaults, then the YAML file's keys, then `overrides` (the flags given)."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            values.update(load_yaml_config(yaml_path))
        values.update(overrides or {})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        known = {f.name: f for f in dataclasses.fields(cls)}
        normalised = {}
        for key, value in values.items():
            name = key.replace("-", "_")
            if name not in known:
                raise ValueError(
                    f"{flag_name(name)}: unknown setting {key!r}; accepted: "
                    + ", ".join(sorted(known))
                )
            normalised[name] = value
        for name in ("lora_targets", "validation_prompts"):
            if name in normalised:
                normalised[name] = _as_string_tuple(name, normalised[name])
        for name, value in normalised.items():
            # YAML 1.1 reads "1e-6" (no dot) as a string; take it as the number it spells.
            if isinstance(value, str) and isinstance(getattr(cls, name, None), float):
                normalised[name] = _as_float(name, value)
        return cls(**normalised)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    # -- checks --------------------------------------------------------------------------

    def validate(self) -> None:
        """Raise ValueError/TypeError naming the flag for anything wrong on its face."""
        for name in ("teacher", "captions"):
            if not getattr(self, name):
                raise ValueError(f"{flag_name(name)}: required, got nothing")
        positive = ["epochs", "batch_size", "gradient_accumulation_steps", "num_steps", "lora_rank",
                    "checkpoint_every", "keep_checkpoints", "max_consecutive_nonfinite", "log_every"]
        optional_positive = ["max_steps", "global_batch_size", "resolution"]
        for name in positive + optional_positive:
            value = getattr(self, name)
            if value is None and name in optional_positive:
                continue
            _check_int(name, value, minimum=1)
        for name in ("lr_warmup_steps", "validate_every", "seed"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.seed > 2**32 - 1:  # numpy's and accelerate's seeding take 32 bits
            raise ValueError(f"{flag_name('seed')}: expected an integer in [0, 2**32 - 1], got {self.seed}")
        for name in ("learning_rate", "learning_rate_lora", "lora_alpha", "max_grad_norm"):
            _check_number(name, getattr(self, name), lower=0.0, lower_open=True)
        for name in ("lambda_kl", "lambda_clip", "guidance_scale", "clip_margin"):
            _check_number(name, getattr(self, name), lower=0.0)
        _check_number("ema_decay", self.ema_decay, lower=0.0, upper=1.0)
        _check_number("lora_null_prompt_probability", self.lora_null_prompt_probability, lower=0.0, upper=1.0)
        _check_int("vsd_min_timestep", self.vsd_min_timestep, minimum=0)
        _check_int("vsd_max_timestep", self.vsd_max_timestep, minimum=self.vsd_min_timestep)
        _check_choice("mixed_precision", self.mixed_precision, MIXED_PRECISIONS)
        _check_choice("lora_null_prompt_scope", self.lora_null_prompt_scope, NULL_PROMPT_SCOPES)
        _check_choice("lora_init", self.lora_init, LORA_INITS)
        if self.timestep_spacing is not None:
            _check_choice("timestep_spacing", self.timestep_spacing, TIMESTEP_SPACINGS)
        if self.overwrite and self.resume is not None:
            raise ValueError(f"{flag_name('overwrite')}: cannot be combined with {flag_name('resume')} {self.resume!r}; pick one")
        for name in ("half_precision_teacher", "gradient_checkpointing", "allow_tf32", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{flag_name(name)}: expected true or false, got {getattr(self, name)!r}")
        if self.report_to is not None:
            _check_choice("report_to", self.report_to, REPORT_TO)
        if not self.lora_targets:
            raise ValueError(f"{flag_name('lora_targets')}: expected at least one module name, got none")
        if self.lambda_clip > 0 and not self.clip_model:
            raise ValueError(
                f"{flag_name('lambda_clip')}: {self.lambda_clip} needs {flag_name('clip_model')} "
                "(a CLIP model id or folder), got none"
            )
        if self.clip_model and self.lambda_clip <= 0:
            raise ValueError(
                f"{flag_name('lambda_clip')}: {flag_name('clip_model')} {self.clip_model!r} needs a weight > 0, "
                f"got {self.lambda_clip}"
            )
        if self.resume is not None and self.resume != "latest" and not Path(self.resume).is_dir():
            raise ValueError(
                f"{flag_name('resume')}: expected 'latest' or an existing checkpoint folder, got {self.resume!r}"
            )

    def per_process_batch_size(self, num_processes: int) -> int:
        """The micro-batch each process draws: --batch-size, or --global-batch-size split evenly."""
        if self.global_batch_size is None:
            return self.batch_size
        if self.global_batch_size % num_processes:
            raise ValueError(
                f"{flag_name('global_batch_size')}: {self.global_batch_size} does not divide across "
                f"{num_processes} processes; use a multiple of {num_processes}"
            )
        return self.global_batch_size // num_processes


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"--config: no such file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"--config: {path} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"--config: {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _as_string_tuple(name: str, value) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",")] if name == "lora_targets" else [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"{flag_name(name)}: expected a list of strings, got {value!r}")
    return tuple(v for v in value if v)


def _as_float(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise TypeError(f"{flag_name(name)}: expected a number, got {value!r}") from None


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{flag_name(name)}: expected an integer, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{flag_name(name)}: expected an integer >= {minimum}, got {value}")


def _check_number(name: str, value, lower: float, upper: float | None = None, lower_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{flag_name(name)}: expected a number, got {type(value).__name__} {value!r}")
    too_low = value <= lower if lower_open else value < lower
    if too_low or (upper is not None and value > upper):
        bound = f"{'>' if lower_open else '>='} {lower}" + (f" and <= {upper}" if upper is not None else "")
        raise ValueError(f"{flag_name(name)}: expected a number {bound}, got {value}")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{flag_name(name)}: expected one of {', '.join(choices)}, got {value!r}")

