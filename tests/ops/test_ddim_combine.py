"""tiue.ops.ddim_combine on every backend against a float64 reference."""

import pytest
import torch

import tiue.ops
from tiue.ops.ddim_combine import ddim_combine_torch

from .support import DTYPES, assert_close, device_for, randn


def _reference(noise, eps, coeffs, scale):
    return ddim_combine_torch(noise.double(), eps.double(), coeffs, scale, torch.float64)


def _coeffs(k):
    return [0.9 - 0.1 * i for i in range(k + 1)]


def _eps_batch_major(k, b, c, h, w, dtype, device):
    """(K, B, C, H, W) view of a (B, K, C, H, W) buffer: eps[k] is not contiguous."""
    return randn(b, k, c, h, w, dtype=dtype, device=device, seed=1).transpose(0, 1)


def _eps_strided_width(k, b, c, h, w, dtype, device):
    """Every other column of a wider buffer: no unit stride anywhere in W."""
    return randn(k, b, c, h, 2 * w, dtype=dtype, device=device, seed=1)[..., ::2]


SHAPES = {
    "sd-like": (4, 2, 4, 8, 8),
    "odd-hw": (3, 2, 3, 7, 5),
    "batch1-k1": (1, 1, 4, 9, 11),
    "not-block-multiple": (2, 3, 4, 17, 23),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_float64_reference(backend, dtype, shape):
    device = device_for(backend)
    k, *image = shape
    noise = randn(*image, dtype=dtype, device=device)
    eps = randn(*shape, dtype=dtype, device=device, seed=1)
    out = tiue.ops.ddim_combine(noise, eps, _coeffs(k), scale=1 / 0.18215)
    assert tiue.ops.last_backend("ddim_combine") == backend
    assert out.dtype == dtype and out.shape == noise.shape and out.is_contiguous()
    assert_close(out, _reference(noise, eps, _coeffs(k), 1 / 0.18215), dtype, "forward")


@pytest.mark.parametrize("make_eps", [_eps_batch_major, _eps_strided_width], ids=["batch-major", "strided-w"])
def test_non_contiguous_inputs(backend, make_eps):
    device = device_for(backend)
    shape = (3, 2, 4, 7, 9)
    eps = make_eps(*shape, dtype=torch.float32, device=device)
    noise = randn(2, 9, 7, 4, device=device).permute(0, 3, 2, 1)  # (B, C, H, W), channels-last-like
    assert not eps[0].is_contiguous() and not noise.is_contiguous()
    out = tiue.ops.ddim_combine(noise, eps, _coeffs(3), scale=0.5)
    assert tiue.ops.last_backend("ddim_combine") == backend
    assert_close(out, _reference(noise, eps, _coeffs(3), 0.5), torch.float32, "forward")


@pytest.mark.parametrize(
    "in_dtype,out_dtype",
    [(torch.float16, torch.float32), (torch.float32, torch.float16), (torch.float32, torch.bfloat16)],
    ids=str,
)
def test_out_dtype(backend, in_dtype, out_dtype):
    device = device_for(backend)
    noise = randn(2, 4, 8, 8, dtype=in_dtype, device=device)
    eps = randn(4, 2, 4, 8, 8, dtype=in_dtype, device=device, seed=1)
    out = tiue.ops.ddim_combine(noise, eps, _coeffs(4), scale=2.0, out_dtype=out_dtype)
    assert out.dtype == out_dtype
    assert_close(out, _reference(noise, eps, _coeffs(4), 2.0), out_dtype, "forward")


def test_float64_accumulates_in_float64(backend):
    device = device_for(backend)
    noise = randn(1, 2, 3, 5, dtype=torch.float64, device=device)
    eps = randn(2, 1, 2, 3, 5, dtype=torch.float64, device=device, seed=1)
    out = tiue.ops.ddim_combine(noise, eps, [1e-3, 1.0 + 1e-12, -1.0], scale=3.0)
    assert_close(out, _reference(noise, eps, [1e-3, 1.0 + 1e-12, -1.0], 3.0), torch.float64, "forward")
    if backend == "triton":  # compiled Triton would round the coefficients to fp32
        assert tiue.ops.last_backend("ddim_combine") == "torch"


def test_dense_channels_last(backend):
    """The fast path's latents: noise and every eps[k] channels-last with the same strides."""
    device = device_for(backend)
    k, batch, channels, height, width = 3, 2, 4, 5, 6
    noise = randn(batch, height, width, channels, device=device).permute(0, 3, 1, 2)
    eps = randn(k, batch, height, width, channels, device=device, seed=1).permute(0, 1, 4, 2, 3)
    assert noise.is_contiguous(memory_format=torch.channels_last) and not noise.is_contiguous()
    if backend == "triton":
        from tiue.kernels import ddim_combine as kernel

        assert kernel.memory_layout(noise, eps) == kernel.CHANNELS_LAST
        assert kernel.memory_layout(noise.contiguous(), eps.contiguous()) == kernel.CONTIGUOUS
        assert kernel.memory_layout(noise, eps.contiguous()) == kernel.STRIDED
    out = tiue.ops.ddim_combine(noise, eps, _coeffs(k), scale=0.5)
    assert tiue.ops.last_backend("ddim_combine") == backend
    assert out.is_contiguous()
    assert_close(out, _reference(noise, eps, _coeffs(k), 0.5), torch.float32, "forward")


@pytest.mark.parametrize("noise_shape", [(4, 6, 5), (2, 2, 3, 4, 5)], ids=["3d", "5d"])
def test_other_ranks(backend, noise_shape):
    device = device_for(backend)
    noise = randn(*noise_shape, device=device)
    eps = randn(2, *noise_shape, device=device, seed=1)
    out = tiue.ops.ddim_combine(noise, eps, [0.5, 0.25, -1.0])
    assert out.shape == noise.shape
    assert_close(out, _reference(noise, eps, [0.5, 0.25, -1.0], 1.0), torch.float32, "forward")


def test_coeffs_as_cpu_tensor():
    noise, eps = randn(1, 4, 4, 4), randn(2, 1, 4, 4, 4, seed=1)
    coeffs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    out = tiue.ops.ddim_combine(noise, eps, coeffs)
    assert_close(out, _reference(noise, eps, coeffs.tolist(), 1.0), torch.float32, "forward")


def test_gradients_match_reference(backend):
    device = device_for(backend)
    noise = randn(2, 3, 5, 4, device=device).requires_grad_()
    eps = randn(3, 2, 3, 5, 4, device=device, seed=1).requires_grad_()
    coeffs, upstream = _coeffs(3), randn(2, 3, 5, 4, device=device, seed=2)
    tiue.ops.ddim_combine(noise, eps, coeffs, scale=0.7).backward(upstream)
    noise64 = noise.detach().double().requires_grad_()
    eps64 = eps.detach().double().requires_grad_()
    _reference(noise64, eps64, coeffs, 0.7).backward(upstream.double())
    assert_close(noise.grad, noise64.grad, torch.float32, "backward")
    assert_close(eps.grad, eps64.grad, torch.float32, "backward")


def test_gradcheck_float64():
    noise = randn(1, 2, 3, 3, dtype=torch.float64).requires_grad_()
    eps = randn(2, 1, 2, 3, 3, dtype=torch.float64, seed=1).requires_grad_()
    assert torch.autograd.gradcheck(lambda n, e: tiue.ops.ddim_combine(n, e, [0.3, -0.7, 1.1], 2.0), (noise, eps))


def test_opcheck():
    noise, eps = randn(2, 3, 5, 4), randn(3, 2, 3, 5, 4, seed=1)
    torch.library.opcheck(torch.ops.tiue.ddim_combine.default, (noise, eps, _coeffs(3), 0.5, torch.float16))
    grad_noise, grad_eps = noise.requires_grad_(), eps.requires_grad_()
    torch.library.opcheck(torch.ops.tiue.ddim_combine.default, (grad_noise, grad_eps, _coeffs(3), 1.0, None))


@pytest.mark.parametrize(
    "noise_shape,eps_shape,coeffs,match",
    [
        ((2, 4, 8, 8), (3, 2, 4, 8, 9), [1.0] * 4, r"eps must have shape \(K, \*noise.shape\)"),
        ((2, 4, 8, 8), (3, 2, 4, 8, 8), [1.0] * 3, r"coeffs must hold K\+1 = 4 values, got 3"),
    ],
)
def test_rejects_bad_shapes(noise_shape, eps_shape, coeffs, match):
    with pytest.raises(ValueError, match=match):
        tiue.ops.ddim_combine(torch.zeros(noise_shape), torch.zeros(eps_shape), coeffs)


def test_rejects_bad_dtypes_and_coeffs():
    noise, eps = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 1, 2, 2)
    with pytest.raises(TypeError, match="noise must be float16, bfloat16, float32 or float64, got torch.int64"):
        tiue.ops.ddim_combine(noise.long(), eps, [1.0, 1.0])
    with pytest.raises(TypeError, match="out_dtype must be None or one of"):
        tiue.ops.ddim_combine(noise, eps, [1.0, 1.0], out_dtype=torch.int32)
    with pytest.raises(ValueError, match="coeffs must be a Python sequence or a CPU tensor"):
        tiue.ops.ddim_combine(noise, eps, torch.ones(2, device="meta"))
