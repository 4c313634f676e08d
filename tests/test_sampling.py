import pytest
import torch

import tiue
from tiue.devices import resolve_device, resolve_dtype
from tiue.sampling import clear_pipeline_cache, load_pipeline


def test_sample_loads_once_and_seeds(tiny_pipeline_dir):
    clear_pipeline_cache()
    first = tiue.sample("a cat", model=str(tiny_pipeline_dir), seed=3, output_type="pt")
    again = tiue.sample("a cat", model=str(tiny_pipeline_dir), seed=3, output_type="pt")
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert load_pipeline(str(tiny_pipeline_dir)) is load_pipeline(str(tiny_pipeline_dir), "cpu", "fp32")
    images = tiue.sample(["a", "b"], model=str(tiny_pipeline_dir), seed=0)
    assert len(images) == 2


def test_sample_without_a_model_uses_the_embedded_default(monkeypatch):
    import tiue.embedded
    import tiue.sampling
    from tiue.embedded import default_model

    if default_model() is None:
        with pytest.raises(ValueError, match="^model"):
            tiue.sample("a cat")
    else:
        images = tiue.sample("a red circle", seed=0)
        assert len(images) == 1 and images[0].size == (32, 32)
    # Without an embedded default, the model is required and the error says so.
    monkeypatch.setattr(tiue.embedded, "default_model", lambda: None)
    with pytest.raises(ValueError, match="^model: required"):
        tiue.sample("a cat")


def test_seed_and_generator_are_exclusive(tiny_pipeline_dir):
    with pytest.raises(ValueError, match="^seed, generator"):
        tiue.sample("a", model=str(tiny_pipeline_dir), seed=1, generator=torch.Generator())


def test_device_and_dtype_choices():
    assert resolve_device(None).type in ("cpu", "cuda")
    assert resolve_dtype(None, torch.device("cpu")) == torch.float32
    assert resolve_dtype(None, torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="^dtype"):
        resolve_dtype("fp8", torch.device("cpu"))
    with pytest.raises(ValueError, match="^device"):
        resolve_device("not-a-device")
