"""Backward of tiue.ops.shared_kv_attention: each implementation, time and peak memory.

    python -m pytest benchmarks/test_attention_backward.py -q -s

Rows are labelled by the function they run, so two labels never time one code path:
"einsum" is the unchunked formula (it holds the fp32 (K, B, H, N, M) probabilities and three
more tensors of that size), "chunked" the same formula over chunks of query rows (what the op's
backward runs on CUDA), "flash-cpu" SDPA's fused CPU backward on the folded layout (what it runs
on a CPU). The row the op itself uses on this device is marked "(the op's)". Shapes: the
student's cross-attention at the highest UNet level, text keys M = 77, K = 4. Peak memory counts
the tensors the backward allocates (tiue.testing.memory.PeakMemory; on CUDA the allocator's
peak), not its inputs; "bound" is backward_memory_bytes() of the chunked path, computed from
its chunking rule. fp16 on CUDA (the training precision), fp32 on a CPU.
Results: benchmarks/results/attention-backward-<device>.md (and $TIUE_RESULTS_DIR when set).
Nothing is asserted about speed.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import _write_atomically, device_name, git_revision, report_stem  # noqa: E402

from tiue.ops.shared_kv_attention import (  # noqa: E402
    backward_implementation,
    backward_memory_bytes,
    shared_kv_attention_backward_chunked,
    shared_kv_attention_backward_einsum,
    shared_kv_attention_backward_flash_cpu,
)
from tiue.testing.memory import PeakMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (name, K, B, H, N, M, D): the small training benchmark's level and SD2.1-base's 64x64 level.
SHAPES = [
    ("small 16x16 latents", 4, 2, 4, 256, 77, 32),
    ("SD2.1 64x64 level, batch 1", 4, 1, 5, 4096, 77, 64),
]
CUDA_SHAPES = SHAPES + [("SD2.1 64x64 level, batch 4", 4, 4, 5, 4096, 77, 64)]
DRY_RUN_SHAPES = [("dry run", 4, 1, 2, 64, 7, 16)]


def variants(device_type: str) -> dict[str, object]:
    """label -> function, one label per function; the op's own backward marked."""
    functions = {"einsum": shared_kv_attention_backward_einsum, "chunked": shared_kv_attention_backward_chunked}
    if device_type == "cpu":
        functions["flash-cpu"] = shared_kv_attention_backward_flash_cpu
    ops_own = backward_implementation(device_type)
    return {(f"{label} (the op's)" if fn is ops_own else label): fn for label, fn in functions.items()}


def _inputs(device, dtype, k_groups, batch, heads, tokens, keys, head_dim):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(k_groups, batch, tokens, heads, head_dim, generator=generator).to(device, dtype)
    q = q.permute(0, 1, 3, 2, 4)  # as the attention processor lays it out
    k = torch.randn(batch, heads, keys, head_dim, generator=generator).to(device, dtype)
    v = torch.randn(batch, heads, keys, head_dim, generator=generator).to(device, dtype)
    out = torch.ops.tiue.shared_kv_attention(q, k, v)
    return torch.randn(out.shape, generator=generator).to(device, dtype), q, k, v, out


def _peak_bytes(fn, args, device) -> int:
    """Bytes the call allocates beyond its inputs (CUDA: the allocator's peak)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn(*args)
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - resident
    with PeakMemory() as memory:
        fn(*args)
    return memory.peak_bytes


def _seconds(fn, args, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn(*args)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(device: torch.device, dry_run: bool = False) -> str:
    """The Markdown table; the results file is written beside the other reports."""
    import tiue.ops  # noqa: F401  (registers the op)

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    shapes = DRY_RUN_SHAPES if dry_run else (CUDA_SHAPES if device.type == "cuda" else SHAPES)
    tolerance = 2e-2 if dtype == torch.float16 else 1e-3
    rows = []
    for name, *shape in shapes:
        args = _inputs(device, dtype, *shape)
        reference = shared_kv_attention_backward_einsum(*(a.float() for a in args))
        bound = backward_memory_bytes(tuple(shape), dtype)
        for label, fn in variants(device.type).items():
            try:
                grads = fn(*args)
                for got, expected in zip(grads, reference):
                    torch.testing.assert_close(got.float(), expected, rtol=tolerance, atol=tolerance)
                peak = _peak_bytes(fn, args, device)
                seconds = [_seconds(fn, args, device) for _ in range(2 if dry_run else 5)]
                rows.append((name, shape, label, f"{statistics.median(seconds) * 1e3:.1f}", f"{peak / 2**20:.1f}"))
            except torch.OutOfMemoryError:
                rows.append((name, shape, label, "out of memory", ""))
                torch.cuda.empty_cache()
        rows.append((name, shape, "chunked: bound from its rule", "",
                     f"{(bound['workspace'] + bound['outputs']) / 2**20:.1f}"))
    lines = [
        f"### shared_kv_attention backward on {device_name(device)}",
        "",
        f"git {git_revision()}, torch {torch.__version__}, {str(dtype).removeprefix('torch.')}, K = 4; "
        "`python -m pytest benchmarks/test_attention_backward.py -q -s`",
        "",
        "| shape (B, H, N, M, D) | backward | median ms | peak memory MiB |",
        "|---|---|---:|---:|",
    ]
    lines += [f"| {name} {tuple(shape[1:])} | {label} | {ms} | {mib} |" for name, shape, label, ms, mib in rows]
    text = "\n".join(lines) + "\n"
    extra = [Path(os.environ["TIUE_RESULTS_DIR"])] if os.environ.get("TIUE_RESULTS_DIR") else []
    directories = extra if dry_run else [ROOT / "benchmarks" / "results", *extra]  # a dry run never writes results/
    for directory in directories:
        _write_atomically(directory / f"{report_stem('attention-backward', device)}.md", text)
    return text


def test_attention_backward_time_and_memory():
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dry_run = os.environ.get("TIUE_E2E_DRY_RUN") == "1"
    print("\n" + measure(device, dry_run))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
