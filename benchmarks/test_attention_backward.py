"""Backward of tiue.ops.shared_kv_attention: SDPA's fused backward vs the einsum formula.

    python -m pytest benchmarks/test_attention_backward.py -q -s

"einsum" is the formula the op's backward used before (it holds the fp32 (K, B, H, N, M)
probabilities and three more tensors of that size); "sdpa" is the op's torch backward now
(SDPA's fused kernel on the K groups folded into the query axis). Shapes: the student's
cross-attention at the highest UNet level, text keys M = 77, K = 4. Peak memory counts the
tensors the backward allocates (tiue.testing.memory.PeakMemory; on CUDA the allocator's peak),
not its inputs. Runs on CUDA when available (SDPA's memory-efficient kernels). Results:
benchmarks/results/attention-backward-<device>.md. Nothing is asserted about speed.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import _write_atomically, device_name, git_revision, report_stem  # noqa: E402

from tiue.ops.shared_kv_attention import (  # noqa: E402
    shared_kv_attention_backward_einsum,
    shared_kv_attention_backward_sdpa,
)
from tiue.testing.memory import PeakMemory  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# (name, K, B, H, N, M, D): the small training benchmark's level and SD2.1-base's 64x64 level.
SHAPES = [
    ("small 16x16 latents", 4, 2, 4, 256, 77, 32),
    ("SD2.1 64x64 level, batch 1", 4, 1, 5, 4096, 77, 64),
]
VARIANTS = {"einsum (before)": shared_kv_attention_backward_einsum, "sdpa (now)": shared_kv_attention_backward_sdpa}


def _inputs(device, k_groups, batch, heads, tokens, keys, head_dim):
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(k_groups, batch, heads, tokens, head_dim, generator=generator).to(device)
    k = torch.randn(batch, heads, keys, head_dim, generator=generator).to(device)
    v = torch.randn(batch, heads, keys, head_dim, generator=generator).to(device)
    out = torch.ops.tiue.shared_kv_attention(q, k, v)
    return torch.randn(out.shape, generator=generator).to(device), q, k, v, out


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


def test_attention_backward_time_and_memory():
    import tiue.ops  # noqa: F401  (registers the op)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name, *shape in SHAPES:
        args = _inputs(device, *shape)
        reference = shared_kv_attention_backward_einsum(*args)
        for variant, fn in VARIANTS.items():
            grads = fn(*args)
            for got, expected in zip(grads, reference):
                torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
            peak = _peak_bytes(fn, args, device)
            seconds = [_seconds(fn, args, device) for _ in range(5)]
            rows.append((name, variant, statistics.median(seconds) * 1e3, peak / 2**20))
    lines = [
        f"### shared_kv_attention backward on {device_name(device)}",
        "",
        f"git {git_revision()}, torch {torch.__version__}, fp32, K = 4, M = 77 text keys; "
        "`python -m pytest benchmarks/test_attention_backward.py -q -s`",
        "",
        "| shape (K, B, H, N, M, D) | backward | median ms | peak memory MiB |",
        "|---|---|---:|---:|",
    ]
    for (name, variant, ms, mib), shape in zip(rows, [s for s in SHAPES for _ in VARIANTS]):
        lines.append(f"| {name} {tuple(shape[1:])} | {variant} | {ms:.1f} | {mib:.1f} |")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    path = ROOT / "benchmarks" / "results" / f"{report_stem('attention-backward', device)}.md"
    _write_atomically(path, text)
    assert path.is_file()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-s"]))
