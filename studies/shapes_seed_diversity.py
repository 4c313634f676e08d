"""How much a shapes model's images change with the seed, for the same caption.

    OMP_NUM_THREADS=1 python studies/shapes_seed_diversity.py MODEL[:STEPS[:loop:CFG]] ...

For each of the page's four grid captions, 16 seeds: the mean over pixels of the per-pixel
standard deviation across seeds (0-255 scale), averaged over the captions, and the share of
seed pairs whose images differ in fewer than 5% of their pixels (near-copies). A student that
collapsed onto one image per caption scores near 0 and near 1. Examples:
`shapes:4`, `shapes-teacher:4:loop:1.5`, `runs/shapes-vsd/final:1`.
"""

from __future__ import annotations

import sys

import numpy as np
import torch

from tiue.eval.runner import EvalSpec, sample_images
from tiue.sampling import load_pipeline

PROMPTS = (
    "a red circle",
    "a small blue square on a yellow background",
    "a large green triangle",
    "a white cross on a black background",
)
SEEDS = 16


def diversity(model: str, steps: int, mode: str, guidance: float | None) -> tuple[float, float]:
    spec = EvalSpec(model, steps=steps, mode=mode, guidance_scale=guidance, num_images=SEEDS, seed=0, batch_size=SEEDS)
    pipe = load_pipeline(model, "cpu", "fp32")
    stds, copies = [], []
    for prompt in PROMPTS:
        images = sample_images(pipe, [prompt] * SEEDS, range(SEEDS), spec).astype(np.float32)
        stds.append(images.std(axis=0).mean())
        changed = [(np.abs(images[i] - images[j]).max(-1) > 32).mean() for i in range(SEEDS) for j in range(i + 1, SEEDS)]
        copies.append(np.mean(np.array(changed) < 0.05))
    return float(np.mean(stds)), float(np.mean(copies))


def main(arguments: list[str]) -> None:
    torch.set_num_threads(1)
    for argument in arguments:
        parts = argument.split(":")
        model, steps = parts[0], int(parts[1]) if len(parts) > 1 else 4
        mode = parts[2] if len(parts) > 2 else "loopfree"
        guidance = float(parts[3]) if len(parts) > 3 else None
        std, copies = diversity(model, steps, mode, guidance)
        print(f"{argument:40s} per-pixel std across seeds {std:6.1f}; near-copy pairs {copies:.2f}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
