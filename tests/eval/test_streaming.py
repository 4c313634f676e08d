"""Images streamed to disk, resumed runs, and memory that grows with the batch, not with N."""

import json
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest

from tiue.cli import main
from tiue.eval.image_store import ImageStore
from tiue.eval.knn_metrics import prdc
from tiue.eval.runner import EvalSpec, _extract, _sample_to_store


def _eval(args, out):
    assert main(["eval", *map(str, args), "--no-progress", "--json", str(out)]) == 0
    return json.loads(out.read_text())


def test_a_rerun_resumes_from_the_images_on_disk(tiny_pipeline_dir, tiny_features_dir, tmp_path, capsys):
    images = tmp_path / "images"
    args = ["--model", tiny_pipeline_dir, "--features", tiny_features_dir, "--num-images", 9, "--steps", 2,
            "--batch-size", 4, "--out-dir", images]
    first = _eval(args, tmp_path / "first.json")
    assert first["num_sampled"] == 9 and len(list(images.glob("*.png"))) == 9
    for i in (2, 7):
        (images / f"{i:06d}.png").unlink()
    second = _eval(args, tmp_path / "second.json")
    assert second["num_sampled"] == 2 and second["seconds_per_image"] > 0
    for key in ("fid", "precision", "recall", "density", "coverage", "accuracy"):
        assert second[key] == pytest.approx(first[key], rel=1e-6, abs=1e-9), key
    assert "kid" not in first  # KID is reported on Inception features only
    assert _eval(args, tmp_path / "third.json")["seconds_per_image"] is None  # nothing left to time
    # Other sampling settings in the same folder are refused, naming the flag.
    assert main(["eval", *map(str, args[:-2]), "--out-dir", str(images), "--seed", "5"]) == 1
    assert "--out-dir:" in capsys.readouterr().err


def test_extractors_are_checked_before_any_sampling(tiny_pipeline_dir, tmp_path, capsys):
    from PIL import Image
    from standins import save_tiny_inception

    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    real = tmp_path / "real"
    real.mkdir()
    Image.new("RGB", (40, 30)).save(real / "a.png")
    broken = tmp_path / "clip"
    broken.mkdir()
    (broken / "config.json").write_text("{}")
    assert main(["eval", "--model", str(tiny_pipeline_dir), "--prompt-file", str(prompts), "--real-images", str(real),
                 "--inception", str(save_tiny_inception(tmp_path / "inception.pt")), "--clip", str(broken),
                 "--num-images", "6", "--out-dir", str(tmp_path / "images")]) == 1
    assert "--clip: expected a local transformers CLIP folder" in capsys.readouterr().err
    assert not (tmp_path / "images").exists()  # failed before sampling anything


class _FakePipe:
    """Returns float images of a fixed size, as a pipeline's output_type="np"."""

    device = "cpu"

    def __init__(self, side):
        self.side = side

    def __call__(self, texts, generator, **_):
        rng = np.random.default_rng(generator[0].initial_seed())
        return SimpleNamespace(images=rng.random((len(texts), self.side, self.side, 3), dtype=np.float32))


class _SmallFeatures:
    name = "stand-in"

    def __init__(self, batch_size):
        self.batch_size = batch_size

    def features(self, images):
        return images.reshape(len(images), -1)[:, :16].astype(np.float32)


def _peak_bytes(num_images, batch_size, folder):
    spec = EvalSpec(model="fake", num_images=num_images, batch_size=batch_size)
    store = ImageStore(folder)
    prompts = ["a picture"] * num_images
    tracemalloc.start()
    try:
        _sample_to_store(_FakePipe(96), prompts, range(num_images), spec, store, progress=False)
        part = _extract(store, range(num_images), _SmallFeatures(batch_size), None, progress=False)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert part["features"].shape == (num_images, 16)
    return peak


def test_peak_memory_grows_with_the_batch_not_with_the_number_of_images(tmp_path):
    one_image = 96 * 96 * 3 * 4  # a float32 sample from the pipeline
    _peak_bytes(4, 4, tmp_path / "warm-up")  # first-use imports and caches are not the run's memory
    small = _peak_bytes(16, 4, tmp_path / "a")
    large = _peak_bytes(96, 4, tmp_path / "b")
    wider = _peak_bytes(16, 16, tmp_path / "c")  # sampling and feature batches of 16
    # 80 more images would add ~80 float images (8.8 MB) if they were held; allow a few KB of features.
    assert large - small < 2 * one_image, (small, large)
    assert wider - small > 6 * one_image, (small, wider)  # 12 more images per batch are held at once


def test_blocked_prdc_needs_blocks_not_the_full_distance_matrix():
    rng = np.random.default_rng(0)
    real, generated = rng.normal(size=(3000, 8)), rng.normal(size=(3000, 8))
    tracemalloc.start()
    try:
        result = prdc(real, generated, k=5, block_size=128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_matrix = 3000 * 3000 * 8
    assert peak < full_matrix / 4, peak
    assert result == prdc(real, generated, k=5, block_size=3000)
