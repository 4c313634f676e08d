"""Kernel Inception Distance (Binkowski et al. 2018), as clean-fid's `kernel_distance`:
the unbiased MMD^2 with the cubic polynomial kernel k(x, y) = (x.y / D + 1)^3, averaged
over `num_subsets` random subsets of min(N_real, N_generated, max_subset_size) samples.

Written out (a few lines) so that tiue needs only clean-fid's resizer at run time; subsets
are drawn from np.random.RandomState(seed), the generator clean-fid draws from after
np.random.seed(seed), so the two agree number for number (tests/eval/test_cleanfid.py).
"""

from __future__ import annotations

import numpy as np

__all__ = ["kernel_inception_distance"]


def kernel_inception_distance(real: np.ndarray, generated: np.ndarray, num_subsets: int = 100,
                              max_subset_size: int = 1000, seed: int = 0) -> float:
    real, generated = np.asarray(real), np.asarray(generated)
    if real.ndim != 2 or generated.ndim != 2 or real.shape[1] != generated.shape[1]:
        raise ValueError(f"real, generated: expected (N, D) arrays of one D, got {real.shape} and {generated.shape}")
    dims = real.shape[1]
    size = min(len(real), len(generated), max_subset_size)
    if size < 2:
        raise ValueError(f"real, generated: KID needs at least 2 samples in each, got {len(real)} and {len(generated)}")
    rng = np.random.RandomState(seed)
    total = 0.0
    for _ in range(num_subsets):
        # Same draw order as clean-fid: the generated subset first.
        x = generated[rng.choice(len(generated), size, replace=False)]
        y = real[rng.choice(len(real), size, replace=False)]
        within = (x @ x.T / dims + 1) ** 3 + (y @ y.T / dims + 1) ** 3
        between = (x @ y.T / dims + 1) ** 3
        total += (within.sum() - np.diag(within).sum()) / (size - 1) - between.sum() * 2 / size
    return float(total / num_subsets / size)
