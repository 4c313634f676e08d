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
"""

from __future__ import annotations

import numpy as np

__all__ = ["prdc", "f1_score", "pairwise_distances", "kth_neighbour_radii"]


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances (N, M) in float64, clipped at 0 against round-off."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    return np.sqrt(np.maximum(squared, 0.0))


def kth_neighbour_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each sample to its k-th nearest other sample of the same set."""
    distances = pairwise_distances(features, features)
    # Column 0 of the sorted row is the sample itself (distance 0).
    return np.partition(distances, k, axis=1)[:, k]


def prdc(real: np.ndarray, generated: np.ndarray, k: int = 5) -> dict[str, float]:
    real, generated = np.asarray(real), np.asarray(generated)
    for name, array in (("real", real), ("generated", generated)):
        if array.ndim != 2 or array.shape[0] <= k:
            raise ValueError(f"{name}: expected an (N, D) array with N > k = {k}, got shape {array.shape}")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"real, generated: feature sizes differ ({real.shape[1]} vs {generated.shape[1]})")
    real_radii = kth_neighbour_radii(real, k)
    generated_radii = kth_neighbour_radii(generated, k)
    distances = pairwise_distances(real, generated)  # (N_real, N_generated)
    inside_real = distances < real_radii[:, None]
    return {
        "precision": float(inside_real.any(axis=0).mean()),
        "recall": float((distances < generated_radii[None, :]).any(axis=1).mean()),
        "density": float(inside_real.sum(axis=0).mean() / k),
        "coverage": float((distances.min(axis=1) < real_radii).mean()),
    }


def f1_score(precision: float, recall: float) -> float:
    """Harmonic mean of precision and recall (0 when both are 0), as the paper's Table 1."""
    return 0.0 if precision + recall == 0 else 2.0 * precision * recall / (precision + recall)
