"""The GPU paths' rules that a CPU can check: which calls the Triton kernels refuse (and why),
where each process runs, the test suites' interpreter flag, the Triton floor, the kernels'
importability from a plain checkout, and the GPU scripts' backend guard."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiue.devices import process_device
from tiue.ops import dispatch
from tiue.ops.shared_kv_attention import SM90_SHARED_MEMORY_BYTES, attention_rejection
from tiue.testing.environment import use_triton_interpreter_without_gpu

ROOT = Path(__file__).resolve().parents[2]
triton_here = pytest.mark.skipif(
    dispatch.unavailable_reason("triton") is not None, reason="the triton backend is unavailable here"
)


@triton_here
def test_sd1_fp32_attention_exceeds_sm90_shared_memory():
    """SD1.x's head dim 160 in fp32 would stage q, k and v tiles of 278,528 bytes: more than an
    H100/H200 allows per block (232,448), so such a launch must never be attempted."""
    from tiue.kernels.shared_kv_attention import launch_config

    config = launch_config(keys=77, head_dim=160)
    assert (config.block_n, config.block_m, config.block_d) == (16, 128, 256)
    assert config.shared_memory_bytes(4) == 278_528 > SM90_SHARED_MEMORY_BYTES
    assert config.shared_memory_bytes(2) == 139_264 < SM90_SHARED_MEMORY_BYTES


@triton_here
@pytest.mark.parametrize(
    "dtype,device_type,head_dim,limit,expected",
    [
        (torch.float32, "cuda", 64, SM90_SHARED_MEMORY_BYTES, "float32 on CUDA"),
        (torch.float32, "cuda", 160, SM90_SHARED_MEMORY_BYTES, "float32 on CUDA"),
        (torch.float16, "cuda", 160, SM90_SHARED_MEMORY_BYTES, None),
        (torch.bfloat16, "cuda", 256, SM90_SHARED_MEMORY_BYTES, None),
        (torch.float16, "cuda", 256, 101_376, "shared memory"),  # an sm_86-sized limit
        (torch.float32, "cpu", 64, SM90_SHARED_MEMORY_BYTES, None),  # the interpreter keeps fp32
        (torch.float32, "cpu", 160, SM90_SHARED_MEMORY_BYTES, "shared memory"),
        (torch.float64, "cuda", 64, SM90_SHARED_MEMORY_BYTES, "dtype"),
    ],
)
def test_attention_reject_rule(dtype, device_type, head_dim, limit, expected):
    reason = attention_rejection(
        dtype, device_type, keys=77, head_dim=head_dim, groups=4 * 2 * 8, shared_memory_limit=limit
    )
    if expected is None:
        assert reason is None
    else:
        assert reason is not None and expected in reason


@triton_here
def test_attention_reject_rule_reads_the_kernel_limits():
    from tiue.kernels import shared_kv_attention as kernel

    def reason(**sizes):
        args = dict(keys=77, head_dim=64, groups=8) | sizes
        return attention_rejection(torch.float16, "cuda", shared_memory_limit=SM90_SHARED_MEMORY_BYTES, **args)

    assert reason(keys=kernel.MAX_KEYS) is None and "keys" in reason(keys=kernel.MAX_KEYS + 1)
    assert "head dim" in reason(head_dim=kernel.MAX_HEAD_DIM + 1)
    assert "K*B*H" in reason(groups=kernel.MAX_GROUP_PROGRAMS + 1)


@pytest.mark.parametrize(
    "requested,local_rank,count,expected",
    [
        ("cuda", "2", 4, "cuda:2"),  # torchrun's third process: its own GPU
        ("cuda", None, 4, "cuda"),  # no launcher
        ("cuda:1", "2", 4, "cuda:1"),  # an explicit index wins
        ("cpu", "2", 4, "cpu"),
    ],
)
def test_each_launched_process_gets_its_own_gpu(requested, local_rank, count, expected):
    assert process_device(torch.device(requested), local_rank, count) == torch.device(expected)


def test_more_processes_than_gpus_is_refused():
    with pytest.raises(ValueError, match=r"LOCAL_RANK: process 4 needs its own GPU, but this machine has 4"):
        process_device(torch.device("cuda"), "4", 4)
    with pytest.raises(ValueError, match=r"LOCAL_RANK: expected a non-negative integer, got 'x'"):
        process_device(torch.device("cuda"), "x", 4)


def test_interpreter_only_without_a_gpu():
    environ: dict[str, str] = {}
    use_triton_interpreter_without_gpu(environ, cuda_available=True)
    assert "TRITON_INTERPRET" not in environ
    use_triton_interpreter_without_gpu(environ, cuda_available=False)
    assert environ["TRITON_INTERPRET"] == "1"
    explicit = {"TRITON_INTERPRET": "0"}
    use_triton_interpreter_without_gpu(explicit, cuda_available=False)
    assert explicit["TRITON_INTERPRET"] == "0"


def test_old_triton_is_reported_unavailable(monkeypatch):
    if not dispatch._importable("triton"):
        pytest.skip("triton is not installed")
    monkeypatch.setattr(dispatch, "_version", lambda name: (3, 1))
    dispatch._unavailable_reason.cache_clear()
    try:
        reason = dispatch.unavailable_reason("triton")
    finally:
        dispatch._unavailable_reason.cache_clear()
    assert reason is not None and "older than 3.2" in reason


def test_kernels_import_from_a_plain_checkout(tmp_path):
    """A copy of the source tree on PYTHONPATH, never installed, has the Triton kernels."""
    shutil.copytree(ROOT / "tiue", tmp_path / "tiue", ignore=shutil.ignore_patterns("embedded", "__pycache__", "*.so"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    found = subprocess.run(
        [sys.executable, "-c", "import importlib.util as u; print(u.find_spec('tiue.kernels.ddim_combine').origin)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()
    assert Path(found) == tmp_path / "tiue" / "kernels" / "ddim_combine.py"


def test_gpu_scripts_refuse_to_measure_the_wrong_backend():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from require_backend import problems
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    info = {
        "backends": {"torch": "available", "triton": "unavailable: no CUDA device", "cuda": "available"},
        "ops": {"ddim_combine": {"cuda": "cuda"}, "attention_backward": {"cuda": "torch"}},
        "implemented": {"ddim_combine": ["torch", "cuda", "triton"], "attention_backward": ["torch"]},
        "auto_order": {"ddim_combine": {"cuda": ["triton", "cuda"]}, "attention_backward": {"cuda": []}},
    }
    assert problems(["triton"], info) == ["triton: unavailable: no CUDA device"]
    assert problems(["cuda"], info) == []
    info["backends"]["triton"] = "available"
    assert problems(["triton"], info) == ["ddim_combine on CUDA tensors runs on 'cuda', not 'triton'"]
    for script in ("gpu_kernels.sh", "gpu_end_to_end.sh", "gpu_train_step.sh"):
        assert "require_backend.py" in (ROOT / "benchmarks" / script).read_text(), script


def test_cuda_defaults_follow_the_h200_measurements(monkeypatch):
    """With every backend live (as on a GPU machine with a build), CUDA tensors take the CUDA
    extension's ddim_combine and KL statistics (the cheapest eager calls on the H200, in host and
    device time), SDPA for attention and plain PyTorch for the KL backward; forcing a backend
    still selects the kernel."""
    from tiue.ops.ddim_combine import DISPATCHER as ddim_combine
    from tiue.ops.gaussian_kl import STATS_DISPATCHER as gaussian_kl_stats
    from tiue.ops.shared_kv_attention import DISPATCHER as shared_kv_attention

    monkeypatch.setattr(dispatch, "unavailable_reason", lambda backend: None)
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)
    assert ddim_combine.choose("cuda").backend == "cuda"
    assert shared_kv_attention.choose("cuda").backend == "torch"
    assert gaussian_kl_stats.choose("cuda").backend == "cuda"
    assert shared_kv_attention.choose("cpu").backend == "torch"  # no CPU kernel
    monkeypatch.setenv(dispatch.ENV_VAR, "triton")
    assert shared_kv_attention.choose("cuda").backend == "triton"
