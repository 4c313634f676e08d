"""The ops as the compiler and the eager caller see them.

Compiled: each public op turns into standard ops in the graph (its composite), so inductor can
fuse it with its neighbours; an opaque `tiue::` custom op there blocks that fusion. Eager, with
no autograd needed: a call goes straight to the op registered from C++ (`tiue::*_native`) or to
SDPA, never through the Python custom-op layer (`tiue::ddim_combine` and friends).
"""

import pytest
import torch
import torch._dynamo
from torch.utils._python_dispatch import TorchDispatchMode

import tiue.ops
from tiue.ops import dispatch

from .support import randn


def _graph_targets(fn, *args) -> list[str]:
    """The call targets of the FX graph dynamo hands a backend for fn(*args) (no inductor)."""
    seen: list[str] = []

    def record(gm, example_inputs):
        seen.extend(str(node.target) for node in gm.graph.nodes if node.op == "call_function")
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=record, fullgraph=True)(*args)
    return seen


def _step(noise, eps, q, k, v):
    latent = tiue.ops.ddim_combine(noise, eps, [0.5, 0.2, 0.3], scale=2.0)
    return latent, tiue.ops.gaussian_kl(eps.flatten(0, 1)), tiue.ops.shared_kv_attention(q, k, v)


def _inputs():
    noise, eps = randn(2, 4, 6, 6), randn(2, 2, 4, 6, 6, seed=1)
    q, k, v = randn(2, 2, 2, 8, 16, seed=2), randn(2, 2, 5, 16, seed=3), randn(2, 2, 5, 16, seed=4)
    return noise, eps, q, k, v


def test_compiled_graph_holds_no_tiue_custom_op():
    targets = _graph_targets(_step, *_inputs())
    assert targets, "dynamo recorded no graph"
    assert not [t for t in targets if "tiue" in t], targets
    assert any("scaled_dot_product_attention" in t for t in targets)  # the attention stays visible


def test_compiled_graph_with_gradients_holds_no_tiue_custom_op():
    noise, eps, q, k, v = _inputs()
    eps.requires_grad_(True)
    q.requires_grad_(True)
    targets = _graph_targets(lambda *a: [t.sum() for t in _step(*a)], noise, eps, q, k, v)
    assert not [t for t in targets if "tiue" in t], targets


class _OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _ops_called(fn) -> list[str]:
    with _OpLog() as log:
        fn()
    return log.ops


@pytest.fixture
def automatic_backend(monkeypatch):
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    if dispatch.unavailable_reason("cpp") is not None:
        pytest.skip(f"cpp backend unavailable: {dispatch.unavailable_reason('cpp')}")


def test_eager_ddim_combine_calls_the_cpp_op_directly(automatic_backend):
    noise, eps, *_ = _inputs()
    ops = _ops_called(lambda: tiue.ops.ddim_combine(noise, eps, [0.5, 0.2, 0.3], scale=2.0))
    assert ops == ["tiue.ddim_combine_native.default"], ops


def test_eager_gaussian_kl_calls_the_cpp_op_directly(automatic_backend):
    x = randn(4, 3, 5, 5)
    ops = _ops_called(lambda: tiue.ops.gaussian_kl(x))
    assert [op for op in ops if op.startswith("tiue.")] == ["tiue.gaussian_kl_stats_native.default"], ops


def test_eager_attention_calls_sdpa_without_the_custom_op_layer(automatic_backend):
    *_, q, k, v = _inputs()
    ops = _ops_called(lambda: tiue.ops.shared_kv_attention(q, k, v))
    assert not [op for op in ops if op.startswith("tiue.")], ops


def test_eager_calls_that_need_gradients_keep_the_custom_op(automatic_backend):
    noise, eps, *_ = _inputs()
    eps.requires_grad_(True)
    ops = _ops_called(lambda: tiue.ops.ddim_combine(noise, eps, [0.5, 0.2, 0.3]))
    assert "tiue.ddim_combine.default" in ops  # its autograd formula lives there


def test_direct_call_still_words_bad_input(automatic_backend):
    noise, eps, *_ = _inputs()
    with pytest.raises(ValueError, match=r"ddim_combine: coeffs must hold K\+1 = 3 values, got 2"):
        tiue.ops.ddim_combine(noise, eps, [0.5, 0.2])
    with pytest.raises(ValueError, match="gaussian_kl: x must have shape"):
        tiue.ops.gaussian_kl(randn(3, 1))
