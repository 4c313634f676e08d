"""TiUECrossAttnProcessor against diffusers' AttnProcessor2_0 on repeated text."""

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from diffusers import UNet2DConditionModel  # noqa: E402
from diffusers.models.attention_processor import Attention, AttnProcessor2_0  # noqa: E402

import tiue.ops  # noqa: E402
from tiue.attention import TiUECrossAttnProcessor, install_shared_text_attention  # noqa: E402

from .support import device_for, force_backend, randn  # noqa: E402

STEPS, PROMPTS, TEXT_TOKENS, TEXT_DIM = 3, 2, 7, 32


def _randomize_zero_parameters(module: torch.nn.Module) -> None:
    """diffusers zero-initialises some output projections, which would hide whole paths."""
    generator = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM,
        attention_head_dim=8,
        norm_num_groups=8,
    ).eval()
    _randomize_zero_parameters(unet)
    return unet


def _timestep_major(x: torch.Tensor, steps: int) -> torch.Tensor:
    """(B, ...) -> (K*B, ...) with row k*B + b = x[b]."""
    return x.repeat(steps, *([1] * (x.dim() - 1)))


def _cross_attention_layers(module):
    return [m for m in module.modules() if isinstance(m, Attention) and m.is_cross_attention]


def test_install_counts_cross_attention_layers(tiny_unet):
    expected = len(_cross_attention_layers(tiny_unet))
    assert expected == 4  # one in the down block, one in the mid block, two in the up block
    try:
        assert install_shared_text_attention(tiny_unet) == expected
        for layer in tiny_unet.modules():
            if isinstance(layer, Attention):
                is_ours = isinstance(layer.processor, TiUECrossAttnProcessor)
                assert is_ours == layer.is_cross_attention
    finally:
        tiny_unet.set_attn_processor(AttnProcessor2_0())


def test_unet_with_shared_text_matches_repeated_text(tiny_unet):
    """A K*B-batch UNet pass with B-batch text equals diffusers' on the text repeated K times."""
    sample = randn(STEPS * PROMPTS, 4, 8, 8)
    timesteps = torch.tensor([900, 500, 100]).repeat_interleave(PROMPTS)  # timestep-major
    text = randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=1)
    with torch.no_grad():
        tiny_unet.set_attn_processor(AttnProcessor2_0())
        expected = tiny_unet(sample, timesteps, _timestep_major(text, STEPS)).sample
        try:
            install_shared_text_attention(tiny_unet)
            actual = tiny_unet(sample, timesteps, text).sample
        finally:
            tiny_unet.set_attn_processor(AttnProcessor2_0())
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_up_blocks_only(tiny_unet):
    """Installed on the decoder's up blocks alone, as TiUEUNet does, with K*B-row features."""
    up_block = tiny_unet.up_blocks[1]
    channels = tiny_unet.config.block_out_channels
    hidden = randn(STEPS * PROMPTS, channels[1], 4, 4)
    skips = (randn(STEPS * PROMPTS, channels[0], 8, 8, seed=2), randn(STEPS * PROMPTS, channels[0], 8, 8, seed=3))
    # upsampled hidden of the previous block: the block sees 8x8 inputs
    hidden = torch.nn.functional.interpolate(hidden, scale_factor=2.0)
    temb = randn(STEPS * PROMPTS, tiny_unet.config.block_out_channels[0] * 4, seed=4)
    text = randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=5)

    def run(encoder_hidden_states):
        return up_block(
            hidden_states=hidden, res_hidden_states_tuple=skips, temb=temb,
            encoder_hidden_states=encoder_hidden_states,
        )

    with torch.no_grad():
        expected = run(_timestep_major(text, STEPS))
        try:
            assert install_shared_text_attention(tiny_unet.up_blocks) == 2
            actual = run(text)
        finally:
            tiny_unet.set_attn_processor(AttnProcessor2_0())
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_equal_batches_behave_like_attn_processor_2_0(tiny_unet):
    sample = randn(PROMPTS, 4, 8, 8)
    text = randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=1)
    with torch.no_grad():
        expected = tiny_unet(sample, 500, text).sample
        try:
            install_shared_text_attention(tiny_unet)
            actual = tiny_unet(sample, 500, text).sample
        finally:
            tiny_unet.set_attn_processor(AttnProcessor2_0())
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def _standalone_attention(**options):
    torch.manual_seed(0)
    layer = Attention(query_dim=16, cross_attention_dim=TEXT_DIM, heads=2, dim_head=8, **options)
    _randomize_zero_parameters(layer)
    return layer.eval()


LAYER_OPTIONS = {
    "plain": {},
    "residual-rescale": dict(residual_connection=True, rescale_output_factor=2.0),
    "norm-cross": dict(cross_attention_norm="layer_norm"),
    "group-norm": dict(norm_num_groups=4),
}


@pytest.mark.parametrize("options", LAYER_OPTIONS.values(), ids=LAYER_OPTIONS.keys())
@pytest.mark.parametrize("image_input", [False, True], ids=["tokens", "image"])
def test_layer_options(options, image_input):
    layer = _standalone_attention(**options)
    if image_input:
        hidden = randn(STEPS * PROMPTS, 16, 3, 5)
    else:
        hidden = randn(STEPS * PROMPTS, 15, 16)
    text = randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=1)
    with torch.no_grad():
        expected = AttnProcessor2_0()(layer, hidden, _timestep_major(text, STEPS))
        actual = TiUECrossAttnProcessor()(layer, hidden, text)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)


def test_gradients_match_repeated_text():
    """Training backpropagates through the decoder: gradients must agree too."""
    layer = _standalone_attention(residual_connection=True)
    hidden = randn(STEPS * PROMPTS, 10, 16)
    text = randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=1)
    upstream = randn(STEPS * PROMPTS, 10, 16, seed=2)

    def grads(processor, text_rows):
        layer.zero_grad()
        h, t = hidden.clone().requires_grad_(), text.clone().requires_grad_()
        processor(layer, h, text_rows(t)).backward(upstream)
        return [h.grad, t.grad] + [p.grad.clone() for p in layer.parameters()]

    expected = grads(AttnProcessor2_0(), lambda t: _timestep_major(t, STEPS))
    actual = grads(TiUECrossAttnProcessor(), lambda t: t)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)


def test_triton_kernel_inside_the_processor(monkeypatch):
    force_backend("triton", monkeypatch)
    device = device_for("triton")
    # On a GPU the kernel takes half precision (fp32 goes to SDPA); the interpreter takes fp32.
    dtype, tolerance = (torch.float16, 2e-3) if device.type == "cuda" else (torch.float32, 1e-5)
    layer = _standalone_attention().to(device, dtype)
    hidden = randn(STEPS * PROMPTS, 20, 16, dtype=dtype, device=device)
    text = randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=1, dtype=dtype, device=device)
    with torch.no_grad():
        expected = AttnProcessor2_0()(layer, hidden, _timestep_major(text, STEPS))
        actual = TiUECrossAttnProcessor()(layer, hidden, text)
    assert tiue.ops.last_backend("shared_kv_attention") == "triton"
    torch.testing.assert_close(actual, expected, atol=tolerance, rtol=tolerance)


def test_mask_with_equal_batches_matches_diffusers():
    layer = _standalone_attention()
    hidden = randn(PROMPTS, 6, 16)
    text = randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=1)
    mask = torch.ones(PROMPTS, TEXT_TOKENS)
    mask[:, -2:] = 0
    bias = (1 - mask) * -10000.0
    with torch.no_grad():
        expected = AttnProcessor2_0()(layer, hidden, text, attention_mask=bias)
        actual = TiUECrossAttnProcessor()(layer, hidden, text, attention_mask=bias)
    torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-6)


def test_mask_with_shared_text_is_rejected():
    layer = _standalone_attention()
    hidden, text = randn(STEPS * PROMPTS, 6, 16), randn(PROMPTS, TEXT_TOKENS, TEXT_DIM, seed=1)
    with pytest.raises(ValueError, match="attention_mask: not supported when the text is shared"):
        TiUECrossAttnProcessor()(layer, hidden, text, attention_mask=torch.zeros(PROMPTS, TEXT_TOKENS))


def test_batch_that_does_not_divide_is_rejected():
    layer = _standalone_attention()
    hidden, text = randn(5, 6, 16), randn(2, TEXT_TOKENS, TEXT_DIM, seed=1)
    with pytest.raises(ValueError, match=r"its batch \(2\) must divide the hidden_states batch \(5\)"):
        TiUECrossAttnProcessor()(layer, hidden, text)
