"""Telling a TiUE-distilled student from a plain Stable Diffusion folder before sampling it
loop-free: a plain model's one pass gives noise-like images, with no error to say why."""

from __future__ import annotations

import json
from pathlib import Path

from tiue.embedded import resolve_model

__all__ = ["not_a_student_warning"]

TRAINING_RECORD = "tiue_training.json"  # written next to every student `tiue train` exports


def not_a_student_warning(model: str) -> str | None:
    """A warning when `model` is a local pipeline folder that shows no sign of being a TiUE
    student (its model_index.json does not name TiUEPipeline and it has no training record);
    None for students and for hub ids, which cannot be inspected offline."""
    folder = Path(resolve_model(model))
    index_path = folder / "model_index.json"
    if not index_path.is_file() or (folder / TRAINING_RECORD).is_file():
        return None
    try:
        class_name = json.loads(index_path.read_text()).get("_class_name")
    except (OSError, ValueError):
        return None  # loading will report the broken index
    if class_name in ("TiUEPipeline", "TiUEXLPipeline"):
        return None
    return (
        f"{model}: this folder's model_index.json names {class_name} and it has no {TRAINING_RECORD}; the "
        "loop-free pass needs a TiUE-distilled student, and a plain Stable Diffusion model gives noise-like "
        "images in one pass (use --mode loop with more --steps for a plain model; ignore this for students "
        "saved by other tools, such as the paper's released checkpoints)"
    )
