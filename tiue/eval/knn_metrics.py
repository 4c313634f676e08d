"""Precision, recall, density and coverage from k-nearest-neighbour manifolds (Naeem et al.
2020, "Reliable Fidelity and Diversity Metrics for Generative Models"), with k = 5 by default.

Each sample's ball has the radius of its k-th nearest neighbour within its own set (itself
excluded). precision: share of generated samples inside some real ball. recall: share of real
samples inside some generated ball ("inside": strictly closer than the radius, as in
the authors' code). density: mean number of real balls holding a generated
sample, divided by k. coverage: share of real balls holding at least one generated sample.

Written here rather than taken from the `prdc` package: that package (0.2, 2020) needs
scikit-learn only for a pairwise-distance call and prints on every use; the formulas are a
few lines of numpy and are tested against hand-computed configurations.

Memory: distances are computed in blocks of `block_size` rows, so the peak is
block_size x N distances instead of N x N (30K images: ~120 MB per block instead of ~7 GB
per matrix). Blocks stay float64 on purpose: the element-wise arithmetic is the one of the
unblocked formula, so results match earlier runs; float32 would halve a block but can flip
near-ties in the `<` comparisons. Each set is converted to float64 (and its squared norms
taken) once per call, not once per block: at 30K x 2048 the two float64 copies are 0.98 GB,
measured peaks in docs/evaluation.md.

(The module is not named prdc.py: `from tiue.eval import prdc` must give the function.)
"""

from __future__ import annotations

import numpy as np

__all__ = ["prdc", "f1_score", "pairwise_distances", "kth_neighbour_radii", "DEFAULT_BLOCK_SIZE"]

DEFAULT_BLOCK_SIZE = 512


class _Float64Set:
    """A feature set converted to float64 once, with its squared norms."""

    def __init__(self, features: np.ndarray):
        self.values = np.ascontiguousarray(features, np.float64)
        self.norms = (self.values * self.values).sum(1)

    def __len__(self) -> int:
        return len(self.values)


def _distances(x: _Float64Set, rows: slice, y: _Float64Set) -> np.ndarray:
    squared = x.norms[rows][:, None] + y.norms[None, :] - 2.0 * x.values[rows] @ y.values.T
    return np.sqrt(np.maximum(squared, 0.0))


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances (N, M) in float64, clipped at 0 against round-off."""
    x = _Float64Set(x)
    return _distances(x, slice(None), _Float64Set(y))


def _row_blocks(num_rows: int, block_size: int):
    if block_size < 1:
        raise ValueError(f"block_size: expected an integer >= 1, got {block_size}")
    for start in range(0, num_rows, block_size):
        yield slice(start, min(start + block_size, num_rows))


def kth_neighbour_radii(features, k: int, block_size: int = DEFAULT_BLOCK_SIZE) -> np.ndarray:
    """Distance of each sample to its k-th nearest other sample of the same set."""
    features = features if isinstance(features, _Float64Set) else _Float64Set(features)
    radii = np.empty(len(features), np.float64)
    for rows in _row_blocks(len(features), block_size):
        distances = _distances(features, rows, features)
        # Column 0 of the sorted row is the sample itself (distance 0).
        radii[rows] = np.partition(distances, k, axis=1)[:, k]
    return radii


def prdc(real: np.ndarray, generated: np.ndarray, k: int = 5, block_size: int = DEFAULT_BLOCK_SIZE) -> dict[str, float]:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k: expected an integer >= 1 (neighbours defining each ball), got {k!r}")
    real, generated = np.asarray(real), np.asarray(generated)
    for name, array in (("real", real), ("generated", generated)):
        if array.ndim != 2 or array.shape[0] <= k:
            raise ValueError(f"{name}: expected an (N, D) array with N > k = {k}, got shape {array.shape}")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real, generated: feature sizes differ ({real.shape[1]} vs {generated.shape[1]})")
    real, generated = _Float64Set(real), _Float64Set(generated)
    real_radii = kth_neighbour_radii(real, k, block_size)
    generated_radii = kth_neighbour_radii(generated, k, block_size)
    # Row blocks of the (N_real, N_generated) distance matrix; per-generated-sample counts
    # are summed over blocks, per-real-sample answers are final within a block.
    real_balls_holding = np.zeros(len(generated), np.int64)  # per generated sample
    recalled = np.zeros(len(real), bool)
    covered = np.zeros(len(real), bool)
    for rows in _row_blocks(len(real), block_size):
        distances = _distances(real, rows, generated)
        inside_real = distances < real_radii[rows, None]
        real_balls_holding += inside_real.sum(axis=0)
        recalled[rows] = (distances < generated_radii[None, :]).any(axis=1)
        covered[rows] = distances.min(axis=1) < real_radii[rows]
    return {
        "precision": float((real_balls_holding > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(real_balls_holding.mean() / k),
        "coverage": float(covered.mean()),
    }


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (0 when both are 0), as the paper's Table 1."""
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)
