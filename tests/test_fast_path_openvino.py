"""The fast path's OpenVINO backend (CPU, fp32): the same images as the eager pass, one conversion
per input signature, new weights reconverted, and clear refusals; and the plain-PyTorch form of
tiue's ops that the conversion reads."""

import pytest
import torch

from tiue import TiUEPipeline, TiUEXLPipeline, ops
from tiue.ops.ddim_combine import ddim_combine_torch
from tiue.ops.shared_kv_attention import shared_kv_attention_sdpa

pytest.importorskip("openvino")

PROMPTS = ["a red cube", "a blue ball"]


def latents(batch, seed=0):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope="module")
def pipes(tiny_pipeline_dir):
    eager = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    fast = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    for pipe in (eager, fast):
        pipe.set_progress_bar_config(disable=True)
    stats = fast.enable_fast_path()  # fp32 on a CPU with openvino installed: the default backend
    return eager, fast, stats


def test_plain_torch_ops_equal_the_custom_ops():
    generator = torch.Generator().manual_seed(0)
    noise, eps = torch.randn(2, 4, 8, 8, generator=generator), torch.randn(3, 2, 4, 8, 8, generator=generator)
    coeffs = [0.5, 0.1, -0.2, 0.3]
    q = torch.randn(3, 2, 4, 16, 8, generator=generator)
    k, v = torch.randn(2, 4, 7, 8, generator=generator), torch.randn(2, 4, 7, 8, generator=generator)
    expected_z = ops.ddim_combine(noise, eps, coeffs, scale=2.0)
    expected_attention = ops.shared_kv_attention(q, k, v)
    with ops.plain_torch_ops():
        z = ops.ddim_combine(noise, eps, coeffs, scale=2.0)
        attention = ops.shared_kv_attention(q, k, v)
        graph = torch.jit.trace(lambda a, b: ops.ddim_combine(a, b, coeffs), (noise, eps)).graph
    assert "tiue::" not in str(graph)  # what a converter reads: standard ops only
    torch.testing.assert_close(z, ddim_combine_torch(noise, eps, coeffs, 2.0, noise.dtype), rtol=0, atol=0)
    torch.testing.assert_close(z, expected_z, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(attention, expected_attention, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(attention, shared_kv_attention_sdpa(q, k, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("output_type", ["latent", "pt"])
def test_openvino_pass_equals_eager_and_converts_once_per_signature(pipes, output_type):
    eager, fast, stats = pipes
    assert fast.fast_path_backend == "openvino"
    before = stats.compiled_signatures
    for batch, seed in ((2, 0), (1, 1), (2, 2)):  # the third call reuses the first one's model
        kwargs = dict(latents=latents(batch, seed), output_type=output_type)
        got = fast(PROMPTS[:batch], **kwargs).images
        assert relative_error(got, eager(PROMPTS[:batch], **kwargs).images) <= 1e-4
    assert stats.compiled_signatures == before + 2
    other = fast(["a green cone", "a white box"], latents=latents(2, 3), output_type=output_type).images
    expected = eager(["a green cone", "a white box"], latents=latents(2, 3), output_type=output_type).images
    assert relative_error(other, expected) <= 1e-4 and stats.compiled_signatures == before + 2


def test_guided_pass(pipes):
    """The guidance scale is an input of the converted model: a new scale converts nothing."""
    eager, fast, _ = pipes
    kwargs = dict(latents=latents(2, 4), output_type="latent", guidance_scale=3.0, negative_prompt=["a mess"] * 2)
    assert relative_error(fast(PROMPTS, **kwargs).images, eager(PROMPTS, **kwargs).images) <= 1e-4
    converted = len(fast._fast_path._run._requests)
    kwargs["guidance_scale"] = 5.5
    assert relative_error(fast(PROMPTS, **kwargs).images, eager(PROMPTS, **kwargs).images) <= 1e-4
    assert len(fast._fast_path._run._requests) == converted


def test_new_weights_are_reconverted(tiny_pipeline_dir):
    eager = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    fast = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    for pipe in (eager, fast):
        pipe.set_progress_bar_config(disable=True)
    fast.enable_fast_path(backend="openvino")
    fast(PROMPTS, latents=latents(2), output_type="latent")
    generator = torch.Generator().manual_seed(7)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in eager.unet.state_dict().items()}
    eager.unet.load_state_dict(state)
    fast.load_unet_weights(state)
    assert fast.fast_path_backend == "openvino"
    expected = eager(PROMPTS, latents=latents(2), output_type="latent").images
    assert relative_error(fast(PROMPTS, latents=latents(2), output_type="latent").images, expected) <= 1e-4


def test_sdxl_pass(xl_dir):
    eager = TiUEXLPipeline.from_pretrained(xl_dir)
    fast = TiUEXLPipeline.from_pretrained(xl_dir)
    for pipe in (eager, fast):
        pipe.set_progress_bar_config(disable=True)
    fast.enable_fast_path(backend="openvino")
    kwargs = dict(num_inference_steps=2, latents=latents(2, 5), output_type="latent", original_size=(48, 48))
    assert relative_error(fast(PROMPTS, **kwargs).images, eager(PROMPTS, **kwargs).images) <= 1e-4


def test_refusals_name_the_backend(tiny_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(ValueError, match="backend: expected one of 'inductor', 'openvino', got 'onnx'"):
        pipe.enable_fast_path(backend="onnx")
    with pytest.raises(ValueError, match="backend='openvino': compile_mode, freeze_weights and cuda_graphs"):
        pipe.enable_fast_path(backend="openvino", freeze_weights=True)
    pipe.to(dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"backend='openvino': runs fp32 pipelines on the CPU only; the UNet is torch.bfloat16"):
        pipe.enable_fast_path(backend="openvino")
    assert pipe.enable_fast_path(compile=False) is not None and pipe.fast_path_backend == "inductor"
