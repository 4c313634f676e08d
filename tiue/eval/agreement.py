"""Text-image agreement: does the picture show what the prompt asked for?

Shapes world: attribute accuracy -- the feature network's heads read each generated picture,
and a picture counts as right when every attribute its caption names (shape, colour, and size
or background when named) is read back. CLIP score for real models: the cosine between CLIP's
image and text embeddings, averaged (reported unscaled, as the paper's 0.3x values).
"""

from __future__ import annotations

import numpy as np

from tiue.data.shapes import UNNAMED, parse_caption

__all__ = ["attribute_accuracy", "clip_score", "CHECKED_ATTRIBUTES"]

CHECKED_ATTRIBUTES = ("shape", "colour", "size", "background")


def attribute_accuracy(prompts: list[str], predictions: dict[str, np.ndarray]) -> dict[str, float]:
    """{'accuracy': share of pictures with every named attribute right, 'accuracy_shape': ...}.
    Per-attribute values count only the prompts that name that attribute."""
    if not prompts:
        raise ValueError("prompts: expected at least one prompt")
    wanted = [parse_caption(p) for p in prompts]
    all_right = np.ones(len(prompts), dtype=bool)
    result = {}
    for name in CHECKED_ATTRIBUTES:
        target = np.array([w[name] for w in wanted])
        named = target != UNNAMED
        right = predictions[name] == target
        all_right &= right | ~named
        result[f"accuracy_{name}"] = float(right[named].mean()) if named.any() else float("nan")
    result["accuracy"] = float(all_right.mean())
    return result


def clip_score(image_embeddings: np.ndarray, text_embeddings: np.ndarray) -> float:
    """Mean cosine similarity of paired rows."""
    image = image_embeddings / np.linalg.norm(image_embeddings, axis=1, keepdims=True)
    text = text_embeddings / np.linalg.norm(text_embeddings, axis=1, keepdims=True)
    return float((image * text).sum(1).mean())
