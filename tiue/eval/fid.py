"""Frechet distance between Gaussians fitted to two feature sets (Heusel et al. 2017):

    FID = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

scipy's `sqrtm` gives the matrix square root, as the reference implementations use. Its result
can carry a tiny imaginary part from round-off; that is dropped, and a singular product is
regularised with eps * I on both covariances, as those implementations do.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

__all__ = ["feature_statistics", "frechet_distance", "fid_from_features"]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features: expected an (N, D) array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"mu/sigma: the two sets differ in shape ({mu1.shape}, {sigma1.shape}) vs ({mu2.shape}, {sigma2.shape})")
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    # Round-off can leave identical sets a hair below zero.
    return float(max(value, 0.0))


def fid_from_features(real: np.ndarray, generated: np.ndarray) -> float:
    real_stats, generated_stats = feature_statistics(real), feature_statistics(generated)
    if real_stats[0].shape != generated_stats[0].shape:
        raise ValueError(f"features: real has {real_stats[0].shape[0]} dims, generated {generated_stats[0].shape[0]}")
    return frechet_distance(*real_stats, *generated_stats)
