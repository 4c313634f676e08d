"""tiue.ops.shared_kv_attention on every backend against a float64 reference."""

import pytest
import torch

import tiue.ops
from tiue.ops.shared_kv_attention import (
    attention_output_layout,
    backward_implementation,
    backward_memory_bytes,
    shared_kv_attention_backward_chunked,
    shared_kv_attention_backward_einsum,
    shared_kv_attention_backward_flash_cpu,
    shared_kv_attention_sdpa,
)

from .oracles import shared_kv_attention_einsum
from .support import DTYPES, assert_close, device_for, force_backend, randn


@pytest.fixture(params=("torch", "triton"))
def backend(request, monkeypatch):
    """The backends with a shared_kv_attention kernel (cpp and cuda run plain PyTorch)."""
    return force_backend(request.param, monkeypatch)


def _inputs(k_groups, batch, heads, tokens, keys, head_dim, dtype=torch.float32, device="cpu"):
    q = randn(k_groups, batch, heads, tokens, head_dim, dtype=dtype, device=device)
    k = randn(batch, heads, keys, head_dim, dtype=dtype, device=device, seed=1)
    v = randn(batch, heads, keys, head_dim, dtype=dtype, device=device, seed=2)
    return q, k, v


def _reference(q, k, v, scale=None):
    return shared_kv_attention_einsum(q.double(), k.double(), v.double(), scale)


def _expected_strides(q):
    return attention_output_layout(q).stride()


SHAPES = {
    # (K, B, H, N, M, D)
    "sd15-head40": (2, 2, 2, 37, 77, 40),
    "k1": (1, 2, 3, 16, 77, 64),
    "batch1": (3, 1, 2, 20, 77, 32),
    "m-not-block-multiple": (2, 2, 1, 33, 5, 16),
    "one-query": (2, 1, 1, 1, 9, 8),
    "m128": (2, 1, 2, 24, 128, 64),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_float64_reference(backend, dtype, shape):
    q, k, v = _inputs(*shape, dtype=dtype, device=device_for(backend))
    out = tiue.ops.shared_kv_attention(q, k, v)
    # fp32 on a GPU is SDPA's: the Triton kernel's fp32 tiles spill (tests/ops/test_gpu_readiness.py)
    sdpa_instead = backend == "triton" and q.is_cuda and dtype == torch.float32
    assert tiue.ops.last_backend("shared_kv_attention") == ("torch" if sdpa_instead else backend)
    assert out.dtype == dtype and out.shape == q.shape
    assert out.stride() == _expected_strides(q)  # (K, B, N, H, D) in memory, for every backend
    assert_close(out, _reference(q, k, v), dtype, "forward")


def test_processor_layouts_and_custom_scale(backend):
    """q as the processor makes it ((K*B, N, H*D) viewed (K, B, H, N, D)), k/v transposed."""
    device = device_for(backend)
    k_groups, batch, heads, tokens, keys, head_dim = 3, 2, 2, 24, 11, 16
    q = randn(k_groups, batch, tokens, heads, head_dim, device=device).permute(0, 1, 3, 2, 4)
    k = randn(batch, keys, heads, head_dim, device=device, seed=1).transpose(1, 2)
    v = randn(batch, heads, head_dim, keys, device=device, seed=2).transpose(2, 3)
    out = tiue.ops.shared_kv_attention(q, k, v, scale=0.3)
    assert_close(out, _reference(q, k, v, scale=0.3), torch.float32, "forward")


@pytest.mark.parametrize(
    "shape,layout",
    [
        ((3, 1, 2, 40, 7, 16), "heads-inner"),  # B == 1: folding K into the queries is a view
        ((3, 2, 2, 40, 7, 16), "heads-inner"),  # 2M < N: expand k/v over the K groups
        ((3, 2, 2, 10, 7, 16), "heads-inner"),  # 2M >= N: fold the queries (copy of q)
        ((3, 2, 2, 40, 7, 16), "contiguous"),
        ((1, 2, 2, 40, 7, 16), "contiguous"),  # K == 1: plain SDPA
    ],
)
def test_sdpa_fallback_plans_are_exact(shape, layout):
    q, k, v = _inputs(*shape)
    if layout == "heads-inner":
        q = q.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)
    out = shared_kv_attention_sdpa(q, k, v)
    assert out.stride() == _expected_strides(q)
    assert_close(out, _reference(q, k, v), torch.float32, "forward")


def test_triton_hands_long_key_sequences_to_torch(monkeypatch):
    if tiue.ops.dispatch.unavailable_reason("triton") is not None:
        pytest.skip("triton backend unavailable")
    monkeypatch.setenv("TIUE_KERNELS", "triton")
    q, k, v = _inputs(2, 1, 1, 8, 130, 16, device=device_for("triton"))
    out = tiue.ops.shared_kv_attention(q, k, v)
    assert tiue.ops.last_backend("shared_kv_attention") == "torch"
    assert_close(out, _reference(q, k, v), torch.float32, "forward")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_backward_matches_float64_reference(backend, dtype):
    device = device_for(backend)
    q, k, v = (t.requires_grad_() for t in _inputs(2, 2, 2, 12, 9, 16, dtype=dtype, device=device))
    upstream = randn(2, 2, 2, 12, 16, dtype=dtype, device=device, seed=3)
    tiue.ops.shared_kv_attention(q, k, v).backward(upstream)
    q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
    _reference(q64, k64, v64).backward(upstream.double())
    for actual, expected in ((q.grad, q64.grad), (k.grad, k64.grad), (v.grad, v64.grad)):
        assert actual.dtype == dtype
        assert_close(actual, expected, dtype, "backward")


def test_cuda_einsum_backward_matches_float64_reference():
    """The plain PyTorch backward of CUDA tensors, checked here on CPU tensors."""
    q, k, v = _inputs(2, 2, 2, 12, 9, 16)
    upstream = randn(2, 2, 2, 12, 16, seed=3)
    grads = shared_kv_attention_backward_einsum(upstream, q, k, v, shared_kv_attention_sdpa(q, k, v))
    q64, k64, v64 = (t.double().requires_grad_() for t in (q, k, v))
    _reference(q64, k64, v64).backward(upstream.double())
    for actual, expected in zip(grads, (q64.grad, k64.grad, v64.grad)):
        assert_close(actual, expected, torch.float32, "backward")


def test_gradcheck_float64():
    q, k, v = (t.requires_grad_() for t in _inputs(2, 1, 2, 3, 4, 5, dtype=torch.float64))
    assert torch.autograd.gradcheck(tiue.ops.shared_kv_attention, (q, k, v))


def test_opcheck():
    q, k, v = _inputs(2, 2, 2, 12, 9, 16)
    torch.library.opcheck(torch.ops.tiue.shared_kv_attention.default, (q, k, v))
    grads = tuple(t.clone().requires_grad_() for t in (q, k, v))
    torch.library.opcheck(torch.ops.tiue.shared_kv_attention.default, (*grads, 0.25))
    out = shared_kv_attention_sdpa(q, k, v)
    torch.library.opcheck(
        torch.ops.tiue.shared_kv_attention_backward.default, (torch.randn_like(out), q, k, v, out)
    )


@pytest.mark.parametrize(
    "q_shape,k_shape,v_shape,match",
    [
        ((2, 3, 4, 5), (2, 3, 4, 5), (2, 3, 4, 5), r"q must have shape \(K, B, H, N, D\)"),
        ((2, 2, 3, 4, 8), (2, 3, 4), (2, 3, 4), r"k must have shape \(B, H, M, D\)"),
        ((2, 2, 3, 4, 8), (1, 3, 5, 8), (1, 3, 5, 8), r"= \(2, 3, M, 8\) to match q"),
        ((2, 2, 3, 4, 8), (2, 3, 5, 8), (2, 3, 6, 8), "v must have the shape of k"),
    ],
)
def test_rejects_bad_shapes(q_shape, k_shape, v_shape, match):
    with pytest.raises(ValueError, match=match):
        tiue.ops.shared_kv_attention(torch.zeros(q_shape), torch.zeros(k_shape), torch.zeros(v_shape))


def test_rejects_mixed_dtypes():
    q, k, v = _inputs(1, 1, 1, 2, 3, 4)
    with pytest.raises(TypeError, match="must share one dtype"):
        tiue.ops.shared_kv_attention(q, k.half(), v)


# -- the backward on CUDA: chunked, never the whole (K, B, H, N, M) tensor ------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("chunk_bytes", [4096, 2**20])
def test_chunked_backward_matches_float64_reference(dtype, chunk_bytes):
    q, k, v = _inputs(3, 2, 2, 37, 7, 16, dtype=dtype)
    out = shared_kv_attention_sdpa(q.float(), k.float(), v.float()).to(dtype)
    upstream = randn(*out.shape, seed=9).to(dtype)
    got = shared_kv_attention_backward_chunked(upstream, q, k, v, out, None, chunk_bytes)
    expected = shared_kv_attention_backward_einsum(*(t.double() for t in (upstream, q, k, v, out)))
    for actual, want in zip(got, expected):
        assert actual.dtype == dtype
        assert_close(actual, want, dtype, "backward")


def test_chunked_backward_stays_under_its_bound_and_never_builds_the_probabilities():
    from tiue.testing.memory import PeakMemory

    shape = (4, 2, 2, 512, 77, 32)  # (K, B, H, N, M, D)
    k_groups, batch, heads, tokens, keys, head_dim = shape
    q, k, v = _inputs(k_groups, batch, heads, tokens, keys, head_dim)
    out = shared_kv_attention_sdpa(q, k, v)
    upstream = randn(*out.shape, seed=5)
    chunk_bytes = 64 * 1024
    with PeakMemory() as chunked:
        shared_kv_attention_backward_chunked(upstream, q, k, v, out, None, chunk_bytes)
    bound = backward_memory_bytes(shape, torch.float32, chunk_bytes)
    assert chunked.peak_bytes <= bound["workspace"] + bound["outputs"]
    assert chunked.peak_bytes < bound["full_probabilities"]  # less than ONE (K, B, H, N, M) fp32 tensor
    with PeakMemory() as unchunked:
        shared_kv_attention_backward_einsum(upstream, q, k, v, out)
    assert unchunked.peak_bytes > 2 * bound["full_probabilities"]  # what CUDA ran before


def test_the_ops_backward_on_cuda_is_the_chunked_one():
    # The op's backward on CUDA tensors ran the unchunked einsum (four (K, B, H, N, M) fp32
    # tensors: 385 MiB at SD2.1's 64x64 level, K = B = 4), and the benchmark's "sdpa (now)" row
    # timed that same einsum under a second label on CUDA.
    assert backward_implementation("cuda") is shared_kv_attention_backward_chunked
    assert backward_implementation("cpu") is shared_kv_attention_backward_flash_cpu


def test_attention_backward_benchmark_labels_one_function_each():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "test_attention_backward.py"
    spec = importlib.util.spec_from_file_location("attention_backward_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for device_type in ("cpu", "cuda"):
        rows = module.variants(device_type)
        assert len(set(map(id, rows.values()))) == len(rows)
        own = [fn for label, fn in rows.items() if label.endswith("(the op's)")]
        assert own == [backward_implementation(device_type)]


def test_docs_give_the_backward_memory_the_code_computes():
    from pathlib import Path

    bound = backward_memory_bytes((4, 4, 5, 4096, 77, 64), torch.float16)
    docs = (Path(__file__).resolve().parents[2] / "docs" / "kernels.md").read_text()
    for key in ("workspace", "outputs", "full_probabilities"):
        assert f"{bound[key] / 2**20:.1f} MiB" in docs, key
