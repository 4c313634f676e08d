"""Fixtures of the trainer tests: captions files and small TrainConfigs over the tiny teacher."""

import pytest

CAPTIONS = [f"a photo of object number {i}" for i in range(24)]


@pytest.fixture(scope="session")
def captions_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_text("\n".join(CAPTIONS) + "\n")
    return path


@pytest.fixture
def make_config(tiny_pipeline_dir, captions_file, tmp_path):
    """TrainConfig factory: tiny teacher, 32 px, batch 2, K = 2, CPU, nothing logged."""
    from tiue.train import TrainConfig

    def make(**overrides):
        values = dict(
            teacher=str(tiny_pipeline_dir),
            captions=str(captions_file),
            output_dir=str(tmp_path / "run"),
            max_steps=2,
            batch_size=2,
            num_steps=2,
            resolution=32,
            device="cpu",
            report_to="none",
            checkpoint_every=100,
            validation_prompts=(),  # grids are covered by the CLI test
            # Large enough that a few steps move the weights visibly in fp32.
            learning_rate=1e-4,
        )
        values.update(overrides)
        return TrainConfig(**values)

    return make
