"""The README.md model card every saved TiUE pipeline folder carries: YAML front matter the hub
reads (library, base model, tags), how to load the folder, K, safety checking, and the training
settings when the folder came from `tiue train`."""

from __future__ import annotations

import re
from pathlib import Path

from tiue.files import write_text_atomically

__all__ = ["CARD_FILE", "SAFETY_NOTE", "model_card", "write_model_card"]

CARD_FILE = "README.md"
SAFETY_NOTE = (
    "This folder has no safety checker, and TiUEPipeline runs none: unlike diffusers' "
    "StableDiffusionPipeline it never blacks out images. Where outputs reach other people, filter "
    "them yourself (for example with diffusers' StableDiffusionSafetyChecker on the decoded images)."
)
# The settings a reader needs to judge a student, in this order, when the training summary has them.
_TRAINING_KEYS = (
    "teacher", "num_steps", "timestep_spacing", "lambda_kl", "kl_target", "guidance_scale", "learning_rate",
    "learning_rate_lora", "lora_rank", "lora_alpha", "lora_loss", "ema_decay", "batch_size", "max_steps",
    "mixed_precision", "seed",
)


def model_card(
    *,
    name: str,
    base_model: str | None = None,
    num_steps: int = 4,
    timestep_spacing: str | None = None,
    training: dict | None = None,
    pipeline_class: str = "TiUEPipeline",
    base_pipeline_class: str = "StableDiffusionPipeline",
) -> str:
    """The card's text. `training` is tiue_training.json's content (its "config" and "step");
    `pipeline_class` loads the folder, `base_pipeline_class` is the diffusers pipeline of its base."""
    front = ["---", "library_name: diffusers", "pipeline_tag: text-to-image"]
    if base_model:
        front.append(f"base_model: {_yaml_string(base_model)}")
    front += ["tags:", "- tiue", "- text-to-image", "- stable-diffusion", "- distillation", "- one-step", "---"]
    spacing = f' ("{timestep_spacing}" timestep spacing, recorded in scheduler/)' if timestep_spacing else ""
    lines = [
        *front,
        "",
        f"# {name}",
        "",
        "A Stable Diffusion student distilled with TiUE (Time-independent Unified Encoder): it samples in",
        f"one pass, running the UNet encoder once and K = {num_steps} decoder steps as one batch{spacing}.",
        "",
        "## Load it with tiue",
        "",
        "```python",
        "import tiue",
        "",
        f'pipe = tiue.{pipeline_class}.from_pretrained("{name}")',
        f'images = pipe("a photo of a cat", num_inference_steps={num_steps}).images',
        "```",
        "",
        f'or `tiue sample --model {name} --prompt "a photo of a cat" --steps {num_steps}`.',
        "",
        f"`model_index.json` names `{pipeline_class}`, so diffusers' `DiffusionPipeline.from_pretrained` refuses",
        "the folder instead of sampling it with an ordinary multi-step scheduler.",
        f"`{base_pipeline_class}.from_pretrained` still loads its components, but samples them the ordinary",
        "way, which is not what this student was trained for.",
        "",
        "Distilled students are trained without classifier-free guidance: sample with the default",
        "`guidance_scale=1`.",
        "",
        "## Safety checking",
        "",
        SAFETY_NOTE,
    ]
    config = (training or {}).get("config", {})
    rows = [(key, config[key]) for key in _TRAINING_KEYS if key in config]
    if rows:
        lines += ["", "## Training", "", "| setting | value |", "|---|---|"]
        lines += [f"| {key} | {value} |" for key, value in rows]
        if "step" in (training or {}):
            lines.append(f"| steps trained | {training['step']} |")
        lines += ["", "Every setting of the run is in `tiue_training.json`."]
    return "\n".join(lines) + "\n"


def write_model_card(folder: str | Path, **card) -> Path:
    path = Path(folder) / CARD_FILE
    write_text_atomically(path, model_card(**card))
    return path


def rename_card(text: str, new: str, base_model: str | None = None) -> str:
    """A card written under another name (its title, say runs/x/final), for the same model under
    the name `new`: its title and its load commands name the new one, and `base_model`, when
    given, replaces the front matter's base model."""
    old = next((line[2:] for line in text.splitlines() if line.startswith("# ")), None)
    if old is not None:
        for before, after in ((f"# {old}\n", f"# {new}\n"), (f'from_pretrained("{old}")', f'from_pretrained("{new}")'),
                              (f"--model {old} ", f"--model {new} ")):
            text = text.replace(before, after)
    if base_model is not None:
        text = re.sub(r"^base_model: .*$", lambda _: f"base_model: {_yaml_string(base_model)}", text, count=1, flags=re.M)
    return text


def card_base_model(text: str) -> str | None:
    """The front matter's base model, unquoted (None when the card names none)."""
    match = re.search(r'^base_model: "((?:[^"\\]|\\.)*)"$', text, flags=re.M)
    return re.sub(r"\\(.)", r"\1", match.group(1)) if match else None


def _yaml_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
