"""TrainConfig: every setting of a distillation run, from defaults, a YAML file and flags.

Precedence is defaults < YAML < command-line flags. Defaults follow the official recipe (docs/training.md, the
paper's setup). `check()` checks what can be checked before any model is loaded; each
error names the flag, the value received and what is accepted.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tiue.schedule import TIMESTEP_SPACINGS

__all__ = [
    "TrainConfig", "load_yaml_config", "canonical_settings", "flag_name", "MIXED_PRECISIONS", "REPORT_TO",
    "NULL_PROMPT_SCOPES", "LORA_INITS", "KL_TARGETS", "LORA_LOSSES", "TIMESTEP_SPACINGS", "LR_SCHEDULERS", "EXAMPLE_ALIASES",
]

MIXED_PRECISIONS = ("no", "fp16", "bf16")
REPORT_TO = ("none", "tensorboard", "wandb")
# diffusers.optimization.get_scheduler's names that need no more than a warm-up and the run's length
# (piecewise_constant needs step rules, which no flag gives).
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
# The LoRA loss's null prompt: one draw for the whole batch (the official script) or one per sample.
NULL_PROMPT_SCOPES = ("batch", "sample")
# "default": peft's init (A Kaiming-uniform, B zero; the official script); "gaussian": A ~ N(0, 1/r).
LORA_INITS = ("default", "gaussian")
KL_TARGETS = ("output", "epsilon")
LORA_LOSSES = ("alphabar", "teacher")

# Settings of diffusers' training examples (train_text_to_image_lora.py, train_lcm_distill_sd_wds.py)
# spelled differently here: a YAML config written for them reads the same. Names the two share
# (output_dir, learning_rate, lr_scheduler, lr_warmup_steps, mixed_precision, seed, report_to, ...)
# need no alias.
EXAMPLE_ALIASES = {
    "pretrained_model_name_or_path": "teacher",
    "pretrained_teacher_model": "teacher",
    "train_batch_size": "batch_size",
    "max_train_steps": "max_steps",
    "num_train_epochs": "epochs",
    "checkpointing_steps": "checkpoint_every",
    "checkpoints_total_limit": "keep_checkpoints",
    "resume_from_checkpoint": "resume",
    "validation_steps": "validate_every",
    "validation_prompt": "validation_prompts",
}
# Example settings with no counterpart: the examples train on images, tiue on captions only.
NOT_APPLICABLE = {
    name: "has no counterpart here: tiue distils from captions only, no images; give captions "
    "(a .txt or .jsonl file, or a folder of them)"
    for name in ("train_data_dir", "dataset_name", "dataset_config_name", "train_shards_path_or_url")
}
# A variant names weight files (unet/diffusion_pytorch_model.fp16.safetensors), so no dots or slashes.
_VARIANT = re.compile(r"[A-Za-z0-9_-]+")

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
    revision: str | None = None  # hub revision (branch, tag, commit) of the teacher and student
    variant: str | None = None  # weight-file variant of the teacher and student, e.g. fp16
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
    # The KL sum's weight at kl_reference_batch_size prompts per process (the official run: 0.1 at 8
    # per GPU); another per-process batch scales the sum by reference / batch (kl_sum_weight), so
    # the KL-to-VSD ratio is the official one whatever the batch/accumulation/process split.
    lambda_kl: float = 0.1
    kl_reference_batch_size: int = 8
    kl_target: str = "output"  # the KL on the raw decoder outputs (the paper's) or their noise predictions
    guidance_scale: float = 4.5
    learning_rate: float = 1e-6
    learning_rate_lora: float = 1e-3
    lr_warmup_steps: int = 0
    lr_scheduler: str = "constant_with_warmup"  # both optimizers; with 0 warm-up steps, constant
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
    lora_loss: str = "alphabar"  # the fake score's loss: the official sqrt(alphabar)-weighted epsilon MSE, or the teacher's own objective
    timestep_spacing: str | None = None  # the student's K timesteps; None = the teacher scheduler's own
    clip_model: str | None = None
    lambda_clip: float = 0.0
    clip_margin: float = 1.0  # tau in relu(tau - cos); 1.0 makes it the plain 1 - cos

    # Machinery.
    mixed_precision: str = "no"
    half_precision_teacher: bool = False  # frozen UNet weights in the mixed dtype (official: fp32)
    gradient_checkpointing: bool = False  # official: on (configs/sd21-base.yaml); off here for small models
    allow_tf32: bool = True
    use_8bit_adam: bool = False  # bitsandbytes' AdamW8bit for both models
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    resume: str | None = None  # "latest" or a checkpoint folder
    overwrite: bool = False  # start over in an output folder that holds an earlier run
    allow_setting_changes: bool = False  # resume with other method settings than the checkpoint's (recorded)
    max_consecutive_nonfinite: int = 10
    validate_every: int = 0  # 0 = only at the end
    validation_prompts: tuple[str, ...] = DEFAULT_VALIDATION_PROMPTS
    report_to: str | None = None  # None = tensorboard when importable, else none
    log_every: int = 1
    seed: int = 0
    device: str | None = None
    push_to_hub: bool = False  # upload final/ when the run ends
    hub_model_id: str | None = None  # default: the --output-dir folder's name
    # Never written or shown: to_dict (checkpoints, final/, trackers) and repr leave it out.
    hub_token: str | None = dataclasses.field(default=None, repr=False)

    # -- construction --------------------------------------------------------------------

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None):
        """Defaults, then the YAML file's keys, then `overrides` (the flags given)."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            # Aliases resolved per source: a flag overrides a YAML key whichever name the key used.
            values.update(canonical_settings(load_yaml_config(yaml_path), f"--config {yaml_path}"))
        values.update(canonical_settings(overrides or {}, "the flags"))
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        normalised = canonical_settings(values, "the settings")
        for name in ("lora_targets", "validation_prompts"):
            if name in normalised:
                normalised[name] = _as_string_tuple(name, normalised[name])
        for name, value in normalised.items():
            # YAML 1.1 reads "1e-6" (no dot) as a string; take it as the number it spells.
            if isinstance(value, str) and isinstance(getattr(cls, name, None), float):
                normalised[name] = _as_float(name, value)
        return cls(**normalised)

    def to_dict(self) -> dict[str, Any]:
        """Every setting but --hub-token: this is what checkpoints, final/ and trackers record."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "hub_token"}

    def hub_repo_id(self) -> str:
        """The repo --push-to-hub uploads to: --hub-model-id, else the output folder's name."""
        return self.hub_model_id or Path(self.output_dir).resolve().name

    # -- checks --------------------------------------------------------------------------

    def check(self) -> None:
        """Raise ValueError/TypeError naming the flag for anything wrong on its face."""
        from tiue.train.validation import check_train_settings

        self._check_no_empty_paths()
        check_train_settings(self)  # every field's kind and range (tiue/train/validation.py)
        for name in ("teacher", "captions"):
            if not getattr(self, name):
                raise ValueError(f"{flag_name(name)}: required, got nothing")
        if self.overwrite and self.resume is not None:
            raise ValueError(f"{flag_name('overwrite')}: cannot be combined with {flag_name('resume')} {self.resume!r}; pick one")
        if self.lr_scheduler == "constant" and self.lr_warmup_steps:
            raise ValueError(
                f"{flag_name('lr_warmup_steps')}: {self.lr_warmup_steps} has no effect with {flag_name('lr_scheduler')} "
                "constant; use constant_with_warmup (or another schedule), or 0 warm-up steps"
            )
        for name in ("revision", "variant", "hub_model_id", "hub_token"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise TypeError(f"{flag_name(name)}: expected a non-empty string, got {value!r}")
        if self.variant is not None and not _VARIANT.fullmatch(self.variant):
            raise ValueError(
                f"{flag_name('variant')}: expected a weight-file variant such as fp16, bf16 or non_ema (letters, "
                f"digits, _ and -), got {self.variant!r}"
            )
        if self.push_to_hub:
            _check_repo_id(self.hub_repo_id(), given=self.hub_model_id is not None)
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

    def _check_no_empty_paths(self) -> None:
        """An empty path is a mistake (an unset shell variable, say), never "the default": --output-dir
        "" would write the run into the current folder, --student "" would train from the teacher."""
        for name in ("teacher", "student", "captions", "caption_field", "output_dir", "resume", "clip_model"):
            value = getattr(self, name)
            if isinstance(value, str) and not value.strip():
                raise ValueError(f"{flag_name(name)}: expected a path or name, got an empty string {value!r}")

    def kl_sum_weight(self, per_process_batch_size: int) -> float:
        """The weight of the KL sum over one process's K*B decoder outputs: lambda_kl at
        kl_reference_batch_size prompts per process, scaled by reference / B otherwise. L_vsd is a
        mean over the batch and L_kl a sum, so only this keeps their ratio (and the run's method)
        the same whatever the batch, accumulation and process split; with B = 8 per process it is
        the official script's lambda_kl = 0.1 exactly."""
        return self.lambda_kl * self.kl_reference_batch_size / per_process_batch_size

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


def canonical_settings(values: dict[str, Any], source: str) -> dict[str, Any]:
    """`values` keyed by TrainConfig field names: dashes read as underscores, diffusers-example
    names (EXAMPLE_ALIASES) as the field they stand for. A key naming no setting, or two keys
    naming the same one (an alias and its field, say), is an error naming them."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    canonical: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in NOT_APPLICABLE:
            raise ValueError(f"{source}: {key!r} (a setting of diffusers' training examples) {NOT_APPLICABLE[name]}")
        field = EXAMPLE_ALIASES.get(name, name)
        if field not in known:
            raise ValueError(
                f"{flag_name(name)}: unknown setting {key!r}; accepted: " + ", ".join(sorted(known))
                + "; and, as in diffusers' training examples: " + ", ".join(sorted(EXAMPLE_ALIASES))
            )
        if field in canonical:
            raise ValueError(
                f"{flag_name(field)}: given twice in {source}, as {given_as[field]!r} and {key!r}; keep one"
            )
        canonical[field] = value
        given_as[field] = str(key)
    return canonical


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    from tiue.yaml_loading import load_settings_file

    return load_settings_file(path, "--config")


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


def _check_repo_id(repo_id: str, given: bool) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:
        where = "" if given else f" (the {flag_name('output_dir')} folder's name; set {flag_name('hub_model_id')})"
        raise ValueError(
            f"{flag_name('hub_model_id')}: expected NAME or OWNER/NAME (letters, digits, -, _ and ., at most 96, "
            f"no -- or ..), got {repo_id!r}{where}"
        ) from None
