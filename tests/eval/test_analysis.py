import numpy as np
import pytest

from tiue.eval.analysis import adjacent_step_similarity, decoder_outputs, gaussian_fit_summary


def test_gaussian_summary_of_standard_normal_values():
    values = np.random.default_rng(0).normal(size=(4, 8, 4, 8, 8))
    summary = gaussian_fit_summary(values)
    assert summary["mean"] == pytest.approx(0, abs=0.03) and summary["std"] == pytest.approx(1, abs=0.03)
    assert abs(summary["excess_kurtosis"]) < 0.15 and summary["kl_per_sample"] < 0.01
    assert gaussian_fit_summary(values * 3)["kl_per_sample"] > 1.0


def test_decoder_outputs_and_feature_similarity_on_a_tiny_pipeline(tiny_pipeline_dir):
    from tiue.pipeline import TiUEPipeline

    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    values = decoder_outputs(pipe, ["a red circle", "a blue square"], num_steps=3)
    assert values.shape == (3, 2, 4, 8, 8)
    result = adjacent_step_similarity(pipe, ["a red circle"], num_steps=5)
    assert result["timesteps"].shape == (5,) and result["encoder"].shape == (4,) and result["decoder"].shape == (4,)
    assert np.all(np.abs(result["encoder"]) <= 1 + 1e-6)
