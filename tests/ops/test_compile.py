"""torch.compile(fullgraph=True) traces all three ops without a graph break (CPU, inductor)."""

import torch
import torch._dynamo

import tiue.ops

from .support import randn


def _decode_step(noise, eps, q, k, v):
    latent = tiue.ops.ddim_combine(noise, eps, [0.5, 0.2, 0.3], scale=2.0, out_dtype=torch.float32)
    attended = tiue.ops.shared_kv_attention(q, k, v)
    return latent * 2.0, tiue.ops.gaussian_kl(eps.flatten(0, 1)) + 1.0, attended.sum(dim=-1)


def test_all_ops_compile_fullgraph_without_recompiles():
    torch._dynamo.reset()
    noise, eps = randn(2, 4, 6, 6), randn(2, 2, 4, 6, 6, seed=1)
    q, k, v = randn(2, 2, 2, 8, 16, seed=2), randn(2, 2, 5, 16, seed=3), randn(2, 2, 5, 16, seed=4)
    compiled = torch.compile(_decode_step, fullgraph=True)
    # config.patch, not monkeypatch: pytest >= 9.2's undo deletes the config entry for good.
    with torch._dynamo.config.patch(error_on_recompile=True):
        for _ in range(2):  # the second call must reuse the graph (a recompile raises)
            actual = compiled(noise, eps, q, k, v)
    expected = _decode_step(noise, eps, q, k, v)
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-5)
