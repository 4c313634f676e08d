"""The models shipped in tiue/embedded load and sample offline (skipped until they exist)."""

import subprocess
import sys

import pytest
import torch

from tiue.embedded import EMBEDDED_DIR, embedded_models

SHIPPED = ("shapes", "shapes-teacher")


def _require(name):
    if name not in embedded_models():
        pytest.skip(f"embedded model {name!r} not built yet")


@pytest.mark.parametrize("name", SHIPPED)
def test_embedded_pipeline_loads_and_samples(name):
    from tiue.pipeline import TiUEPipeline

    _require(name)
    pipe = TiUEPipeline.from_pretrained(name)
    assert pipe.unet.dtype == torch.float32
    images = pipe(["a red circle", "a small blue square on a yellow background"], num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 32, 32, 3)
    assert images.std() > 0.05  # a picture, not a flat field


def test_default_model_is_the_embedded_student_and_sample_works_offline(tmp_path):
    import tiue

    _require("shapes")
    images = tiue.sample("a red circle", seed=0)
    assert images[0].size == (32, 32)
    env_code = subprocess.run(
        [sys.executable, "-m", "tiue", "sample", "--prompt", "a red circle", "--out", str(tmp_path)],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "", "PYTHONPATH": str(EMBEDDED_DIR.parents[1])},
    )
    assert env_code.returncode == 0, env_code.stderr
    assert (tmp_path / "grid.png").is_file()


def test_embedded_feature_network_loads():
    from tiue.eval.extractors import load_shapes_features

    if not (EMBEDDED_DIR / "shapes-features" / "config.json").is_file():
        pytest.skip("embedded feature network not built yet")
    extractor = load_shapes_features()
    assert extractor.features(__import__("numpy").zeros((2, 32, 32, 3), "uint8")).shape == (2, 64)


def test_embedded_models_fit_the_size_budget():
    if not EMBEDDED_DIR.is_dir():
        pytest.skip("no embedded models yet")
    total = sum(p.stat().st_size for p in EMBEDDED_DIR.rglob("*") if p.is_file())
    assert total <= 25 * 1024 * 1024, f"embedded models take {total / 2**20:.1f} MiB, budget 25 MiB"
