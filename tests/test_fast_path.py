"""The fast path on CPU: inductor compile (slow here, so one module-scoped pipeline serves all
compile checks) and the CUDA-graph bookkeeping that CPU can exercise."""

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tiue import TiUEPipeline
from tiue.fast.graphs import CapturedCall, GraphCache, GraphKey

PROMPTS = ["a red circle", "a blue square"]


def latents(batch, seed=0):
    return torch.randn(batch, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipes(tiny_pipeline_dir):
    eager = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    fast = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    for pipe in (eager, fast):
        pipe.set_progress_bar_config(disable=True)
    torch._dynamo.reset()
    counters.clear()
    stats = fast.enable_fast_path(backend="inductor")
    return eager, fast, stats


def relative_error(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_compiled_pass_equals_eager_without_graph_breaks_or_recompiles(pipes):
    eager, fast, stats = pipes
    expected = eager(PROMPTS, latents=latents(2), output_type="pt").images
    got = fast(PROMPTS, latents=latents(2), output_type="pt").images
    assert relative_error(got, expected) <= 1e-3
    assert stats.compiled_signatures == 1 and stats.compile_seconds > 0
    assert stats.captured_graphs == 0  # CPU: no CUDA graphs
    assert not counters["graph_break"]

    # A second batch size compiles once more; a shape already seen never recompiles.
    one = fast(PROMPTS[:1], latents=latents(1, seed=1), output_type="pt").images
    assert relative_error(one, eager(PROMPTS[:1], latents=latents(1, seed=1), output_type="pt").images) <= 1e-3
    assert stats.compiled_signatures == 2
    with torch._dynamo.config.patch(error_on_recompile=True):
        again = fast(PROMPTS, latents=latents(2, seed=2), output_type="pt").images
    assert relative_error(again, eager(PROMPTS, latents=latents(2, seed=2), output_type="pt").images) <= 1e-3
    assert stats.compiled_signatures == 2


def test_new_weights_are_used_without_recompiling(pipes, tmp_path):
    eager, fast, _ = pipes
    state = {k: v.clone() for k, v in eager.unet.state_dict().items()}
    generator = torch.Generator().manual_seed(5)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    eager.unet.load_state_dict(state)
    from safetensors.torch import save_file

    save_file(state, tmp_path / "student.safetensors")
    with torch._dynamo.config.patch(error_on_recompile=True):
        fast.load_unet_weights(tmp_path / "student.safetensors")
        got = fast(PROMPTS, latents=latents(2), output_type="pt").images
    expected = eager(PROMPTS, latents=latents(2), output_type="pt").images
    assert relative_error(got, expected) <= 1e-3


def test_disable_restores_the_eager_model(pipes):
    eager, fast, _ = pipes
    fast.disable_fast_path()
    assert set(fast.unet.state_dict()) == set(eager.unet.state_dict())
    assert fast.unet.conv_in.weight.is_contiguous()
    got = fast(PROMPTS, latents=latents(2), output_type="pt").images
    torch.testing.assert_close(got, eager(PROMPTS, latents=latents(2), output_type="pt").images, rtol=1e-5, atol=1e-5)


def test_load_unet_weights_rejects_other_architectures(tiny_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    state = dict(pipe.unet.state_dict())
    state.pop("conv_in.weight")
    with pytest.raises(ValueError, match="^path_or_state_dict: keys do not match"):
        pipe.load_unet_weights(state)
    state = dict(pipe.unet.state_dict(), **{"conv_in.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="conv_in.weight has shape"):
        pipe.load_unet_weights(state)
    with pytest.raises(ValueError, match="no such file"):
        pipe.load_unet_weights("/nonexistent/weights")
    # A pipeline folder works too.
    assert pipe.load_unet_weights(tiny_pipeline_dir) == len(pipe.unet.state_dict())


def test_cuda_graphs_need_cuda(tiny_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(ValueError, match="^cuda_graphs"):
        pipe.enable_fast_path(compile=False, cuda_graphs=True)
    with pytest.raises(RuntimeError, match="CUDA graphs need CUDA tensors"):
        CapturedCall(lambda x: x * 2, (torch.ones(2),)).capture(pool=None)


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune"])
def test_inductor_graphs_never_nest_in_ours(tiny_pipeline_dir, mode):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(ValueError, match=rf"compile_mode: '{mode}' makes inductor capture its own CUDA graphs"):
        pipe.enable_fast_path(compile=False, cuda_graphs=True, compile_mode=mode)


def test_moved_weights_drop_every_graph():
    """Graphs bake in parameter addresses: a new fingerprint drops them all, and the next run of
    a key captures afresh (here without CUDA: the same bookkeeping, eager replays)."""
    made = []

    def fn(x):
        made.append(1)
        return x + 1

    cache = GraphCache(use_cuda_graphs=False)
    assert cache.check_fingerprint((1, 2)) is False  # nothing captured yet
    x = torch.zeros(2)
    cache.run(GraphKey.of((x,)), fn, (x,))
    assert cache.check_fingerprint((1, 2)) is False and len(cache) == 1
    assert cache.check_fingerprint((1, 3)) is True
    assert len(cache) == 0 and cache.stale_drops == 1
    cache.run(GraphKey.of((x,)), fn, (x,))
    assert len(cache) == 1


def test_weights_fingerprint_sees_moves_and_layout_changes(tiny_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.enable_fast_path(compile=False, cuda_graphs=False, channels_last=True)
    fast = pipe._fast_path
    before = fast.weights_fingerprint()
    assert fast.weights_fingerprint() == before
    pipe.unet.to(memory_format=torch.contiguous_format)  # new storage for every conv weight
    after_layout = fast.weights_fingerprint()
    assert after_layout != before
    pipe.vae.to(torch.float64)
    assert fast.weights_fingerprint() != after_layout


def test_step_constants_are_made_once(tiny_pipeline_dir):
    """Timesteps and their embeddings go to the device once per (timesteps, dtype, device)."""
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.enable_fast_path(compile=False, cuda_graphs=False)
    fast = pipe._fast_path
    steps, emb = fast.step_constants((751, 501, 251, 1), torch.float32, torch.device("cpu"))
    again = fast.step_constants((751, 501, 251, 1), torch.float32, torch.device("cpu"))
    assert again[0] is steps and again[1] is emb
    assert steps.tolist() == [751, 501, 251, 1] and emb.shape[0] == 4


def test_graph_cache_keys_buffers_and_copy_out():
    calls = []

    def double(x, y):
        calls.append(x.shape)
        return x * 2 + y

    cache = GraphCache(use_cuda_graphs=False)
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    key = GraphKey.of((a, b), extra=(4,))
    first = cache.run(key, double, (a, b))
    # The caller's tensor is a copy: a later call must not overwrite it.
    second = cache.run(key, double, (a * 5, b))
    torch.testing.assert_close(first, torch.full((2, 3), 2.0))
    torch.testing.assert_close(second, torch.full((2, 3), 10.0))
    assert len(cache) == 1
    # Inputs are copied into the static buffers, never aliased.
    call = cache._calls[key]
    assert call.static_inputs[0].data_ptr() not in (a.data_ptr(),)
    # Another batch size, dtype or step count is another graph.
    assert GraphKey.of((torch.ones(3, 3), b)) != GraphKey.of((a, b))
    assert GraphKey.of((a.double(), b)) != GraphKey.of((a, b))
    assert GraphKey.of((a, b), extra=(2,)) != key
    cache.run(GraphKey.of((torch.ones(3, 3), torch.zeros(3, 3))), double, (torch.ones(3, 3), torch.zeros(3, 3)))
    assert len(cache) == 2
    cache.clear()
    assert len(cache) == 0


def test_frozen_weights_compile_and_a_weight_swap_recompiles(tiny_pipeline_dir, tmp_path):
    """freeze_weights: inductor folds the weights into the compiled code, so new weights must
    rebuild the fast path; the images then follow the new weights, not the frozen ones."""
    eager = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    frozen = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    for pipe in (eager, frozen):
        pipe.set_progress_bar_config(disable=True)
    torch._dynamo.reset()
    frozen.enable_fast_path(freeze_weights=True)
    expected = eager(PROMPTS, latents=latents(2), output_type="pt").images
    assert relative_error(frozen(PROMPTS, latents=latents(2), output_type="pt").images, expected) <= 1e-3

    generator = torch.Generator().manual_seed(7)
    state = {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in eager.unet.state_dict().items()}
    eager.unet.load_state_dict(state)
    from safetensors.torch import save_file

    save_file(state, tmp_path / "student.safetensors")
    before = frozen._fast_path
    frozen.load_unet_weights(tmp_path / "student.safetensors")
    # Rebuilt with the same settings (a fresh compile), since frozen code may hold copies of the
    # old weights (oneDNN prepacking); the images follow the new weights.
    assert frozen._fast_path is not before and frozen._fast_path.freeze_weights
    expected = eager(PROMPTS, latents=latents(2), output_type="pt").images
    assert relative_error(frozen(PROMPTS, latents=latents(2), output_type="pt").images, expected) <= 1e-3


def test_frozen_weights_need_a_plain_compile(tiny_pipeline_dir):
    pipe = TiUEPipeline.from_pretrained(tiny_pipeline_dir)
    with pytest.raises(ValueError, match=r"freeze_weights: needs compile=True and compile_mode=None"):
        pipe.enable_fast_path(compile=False, freeze_weights=True)
    with pytest.raises(ValueError, match=r"freeze_weights: needs compile=True"):
        pipe.enable_fast_path(compile_mode="max-autotune-no-cudagraphs", freeze_weights=True)
