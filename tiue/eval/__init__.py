"""Evaluation: metrics from feature arrays, feature extractors, sampling, and the runner.

fid: Frechet distance. kid: kernel inception distance (clean-fid's). knn_metrics: precision, recall,
density, coverage (k-NN manifolds, Naeem et al. 2020, in row blocks) and F1. agreement:
text-image agreement (attribute accuracy, CLIP score). extractors: the shapes feature network,
Inception (TorchScript; clean-fid's clean or legacy protocol) and CLIP feature extractors.
preprocessing: GigaGAN's protocol for real-model evaluation. image_store: generated images on
disk (streaming, resume). reference_cache: cached real-image features. coco: the COCO2014-30K
caption list and references. sharding: prompts split across processes. runner: `evaluate`
(sampling, guided or not, is the pipeline's own). docs/evaluation.md: the Table 1 recipe.
Submodules are imported on first use, so `tiue.eval.sharding` costs no scipy import.
"""

import importlib

__all__ = ["frechet_distance", "fid_from_features", "prdc", "f1_score", "evaluate", "EvalSpec"]

_WHERE = {
    "frechet_distance": "tiue.eval.fid",
    "fid_from_features": "tiue.eval.fid",
    "prdc": "tiue.eval.knn_metrics",
    "f1_score": "tiue.eval.knn_metrics",
    "evaluate": "tiue.eval.runner",
    "EvalSpec": "tiue.eval.runner",
}


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tiue.eval' has no attribute {name!r}")
