"""tiue.ops.gaussian_kl (and its stats/backward ops) on every backend against float64."""

import pytest
import torch

import tiue.ops
from tiue.ops.gaussian_kl import gaussian_kl_backward_torch, gaussian_kl_stats_torch

from .support import DTYPES, assert_close, device_for, randn


def _stats64(x):
    return gaussian_kl_stats_torch(x.detach().double())


SHAPES = {
    "sd-latents": (8, 4, 8, 8),
    "batch1-odd": (1, 3, 7, 5),
    "not-block-multiple": (5, 1237),
    "two-elements": (3, 2),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_forward_matches_float64_reference(backend, dtype, shape):
    x = (randn(*shape) * 1.7 + 0.3).to(device=device_for(backend), dtype=dtype)
    kl = tiue.ops.gaussian_kl(x)
    assert tiue.ops.last_backend("gaussian_kl") == backend
    assert kl.shape == (shape[0],) and kl.dtype == torch.float32  # documented: fp32 output
    assert_close(kl, _stats64(x)[0], torch.float32, "forward")


def test_stats_outputs_match_reference(backend):
    x = randn(4, 3, 9, 11, device=device_for(backend)) * 2.0 - 1.0
    for actual, expected in zip(torch.ops.tiue.gaussian_kl_stats(x), _stats64(x)):
        assert_close(actual, expected, torch.float32, "forward")


def test_large_offset_is_numerically_stable(backend):
    # E[x^2] - E[x]^2 in fp32 loses every digit here; a two-pass / pairwise variance does not.
    x = (randn(3, 4, 16, 16) * 0.01 + 1000.0).to(device_for(backend))
    _, _, var = torch.ops.tiue.gaussian_kl_stats(x)
    torch.testing.assert_close(var.double().cpu(), _stats64(x)[2].cpu(), rtol=1e-3, atol=0)


def test_non_contiguous_input(backend):
    base = randn(6, 5, 9, 8, device=device_for(backend))
    for x in (base.transpose(2, 3), base[:, :, ::2], base[::2]):
        assert_close(tiue.ops.gaussian_kl(x), _stats64(x)[0], torch.float32, "forward")


def test_float64_input_gives_float64_output(backend):
    x = randn(3, 4, 5, dtype=torch.float64, device=device_for(backend))
    kl = tiue.ops.gaussian_kl(x)
    assert kl.dtype == torch.float64
    assert_close(kl, _stats64(x)[0], torch.float64, "forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_float64_reference(backend, dtype):
    device = device_for(backend)
    x = (randn(5, 3, 7, 9) * 1.5 + 0.2).to(device=device, dtype=dtype).requires_grad_()
    upstream = [randn(5, seed=s, device=device) for s in (1, 2, 3)]
    kl, mean, var = torch.ops.tiue.gaussian_kl_stats(x)
    torch.autograd.backward((kl, mean, var), upstream)
    assert tiue.ops.last_backend("gaussian_kl_backward") == backend
    assert x.grad.dtype == dtype and x.grad.shape == x.shape

    x64 = x.detach().double().requires_grad_()
    torch.autograd.backward(gaussian_kl_stats_torch(x64), [u.double() for u in upstream])
    assert_close(x.grad, x64.grad, dtype, "backward")


def test_backward_with_broadcast_gradient(backend):
    # kl.sum().backward() hands the op an expanded (stride 0) gradient.
    x = randn(4, 2, 6, 5, device=device_for(backend)).requires_grad_()
    tiue.ops.gaussian_kl(x).sum().backward()
    x64 = x.detach().double().requires_grad_()
    gaussian_kl_stats_torch(x64)[0].sum().backward()
    assert_close(x.grad, x64.grad, torch.float32, "backward")


def test_gradcheck_float64(backend):
    x = randn(3, 2, 5, dtype=torch.float64, device=device_for(backend)).requires_grad_()
    assert torch.autograd.gradcheck(tiue.ops.gaussian_kl, (x,))
    assert torch.autograd.gradcheck(torch.ops.tiue.gaussian_kl_stats, (x,))


def test_triton_split_reduction_matches_reference(monkeypatch):
    # The launcher splits samples into chunks on a GPU; force the split on the interpreter.
    if tiue.ops.dispatch.unavailable_reason("triton") is not None:
        pytest.skip("triton backend unavailable")
    from tiue.kernels.gaussian_kl import gaussian_kl_forward

    x = (randn(3, 5000) * 3.0 + 50.0).to(device_for("triton"))
    for chunks in (2, 3, 5):
        for actual, expected in zip(gaussian_kl_forward(x, chunks=chunks), _stats64(x)):
            torch.testing.assert_close(actual.double().cpu(), expected.cpu(), rtol=1e-5, atol=1e-5)


def test_opcheck():
    x = randn(4, 3, 5, 6)
    torch.library.opcheck(torch.ops.tiue.gaussian_kl.default, (x,))
    torch.library.opcheck(torch.ops.tiue.gaussian_kl_stats.default, (x,))
    torch.library.opcheck(torch.ops.tiue.gaussian_kl_stats.default, (x.clone().requires_grad_(),))
    _, mean, var = gaussian_kl_stats_torch(x)
    grads = [randn(4, seed=s) for s in (1, 2, 3)]
    torch.library.opcheck(torch.ops.tiue.gaussian_kl_backward.default, (x, mean, var, *grads))


def test_backward_reference_is_the_autograd_gradient():
    x = randn(3, 4, 5, dtype=torch.float64).requires_grad_()
    kl, mean, var = gaussian_kl_stats_torch(x)
    grads = [randn(3, dtype=torch.float64, seed=s) for s in (1, 2, 3)]
    (expected,) = torch.autograd.grad((kl, mean, var), x, grads)
    actual = gaussian_kl_backward_torch(x.detach(), mean.detach(), var.detach(), *grads)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("shape", [(4,), (3, 1), (2, 1, 1)])
def test_rejects_samples_of_one_element(shape):
    with pytest.raises(ValueError, match="at least 2 elements per sample"):
        tiue.ops.gaussian_kl(torch.zeros(shape))


def test_rejects_integer_input():
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        tiue.ops.gaussian_kl(torch.zeros(2, 3, dtype=torch.int32))
