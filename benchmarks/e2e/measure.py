"""Measuring one row: wall time per call, FLOPs, peak memory, and the device's matmul rate."""

from __future__ import annotations

import math
import signal
import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "RowTimeout",
    "count_flops",
    "deadline",
    "latency_summary",
    "matmul_rate",
    "paired_ratios",
    "graph_pools",
    "peak_memory_bytes",
    "resident_bytes",
    "synchronize",
    "timed_rounds",
]


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _sdpa_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """SDPA on (B, H, N, D) queries and (B, H, M, D) keys/values: QK^T and PV, 2 FLOPs a MAC."""
    *lead, queries, head_dim = q_shape
    keys, value_dim = k_shape[-2], v_shape[-1]
    return 2 * math.prod(lead) * queries * keys * (head_dim + value_dim)


def _shared_kv_attention_flops(q_shape, k_shape, *args, out_shape=None, **kwargs) -> int:
    """tiue::shared_kv_attention: q (..., N, D) against k (B, H, M, D): QK^T and PV, 2 FLOPs a MAC."""
    keys = k_shape[-2]
    return 2 * 2 * math.prod(q_shape) * keys


def _extra_flop_formulas() -> dict:
    """Attention ops the stock counter does not know: CPU SDPA and tiue's shared-K/V attention."""
    formulas = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        formulas[cpu_sdpa] = _sdpa_flops
    tiue_ops = torch.ops.tiue
    try:
        formulas[tiue_ops.shared_kv_attention] = _shared_kv_attention_flops
    except (AttributeError, RuntimeError):
        pass  # not registered in this build: nothing to count
    return formulas


def count_flops(fn: Callable[[], object]) -> int:
    """Dense FLOPs (matmuls, convolutions, attention) of one call of `fn`, eager ops only."""
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_extra_flop_formulas()) as counter:
        fn()
    return int(counter.get_total_flops())


def resident_bytes(modules) -> int:
    """Bytes of the parameters and buffers of `modules`, each storage counted once."""
    seen: dict[int, int] = {}
    for module in modules:
        for tensor in (*module.parameters(), *module.buffers()):
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def graph_pools() -> set:
    """Ids of the CUDA caching allocator's private pools (CUDA graphs') that hold memory now."""
    if not torch.cuda.is_available():
        return set()
    return {tuple(s["segment_pool_id"]) for s in torch.cuda.memory_snapshot()
            if tuple(s.get("segment_pool_id", (0, 0))) != (0, 0)}


def _pool_bytes(pools) -> int:
    return sum(s["total_size"] for s in torch.cuda.memory_snapshot() if tuple(s.get("segment_pool_id", (0, 0))) in pools)


def peak_memory_bytes(fn: Callable[[], object], device: torch.device, modules=(), pools=()) -> tuple[int, str]:
    """Peak bytes of one call of `fn` that belong to its row, and what they include.

    CUDA: the weights of the row's own `modules`, plus the private pools of the CUDA graphs the
    row captured (`pools`, reserved for as long as the graphs live: a replay allocates nothing),
    plus the peak of what the call allocates beyond what was allocated before it. Other rows'
    model copies and graphs, loaded earlier in the same process, are not counted: the device
    totals would charge every row for them. CPU: the peak of tensors the call itself allocates
    (weights excluded), counted at the ATen level; code compiled by inductor allocates outside
    ATen, so call this on eager code only.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        call = torch.cuda.max_memory_allocated(device) - before
        total = resident_bytes(modules) + _pool_bytes(set(pools)) + call
        return total, "the row's own weights + its CUDA-graph pools + what the call allocates"
    from tiue.testing.memory import PeakMemory

    with torch.no_grad(), PeakMemory() as memory:
        fn()
    return memory.peak_bytes, "activations, weights excluded"


def timed_rounds(fn: Callable[[], object], device: torch.device, rounds: int, warmup: int) -> list[float]:
    """Seconds per call, one call a round, the device synchronised before the clock stops."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def paired_ratios(call: Callable[[], object], base: Callable[[], object], device: torch.device,
                  rounds: int) -> list[float]:
    """time(call) / time(base) per round, the two run back to back in alternating order.

    On a shared machine the load drifts between rows measured minutes apart; two calls a few
    seconds apart see nearly the same load, so their ratio is steadier than a ratio of medians.
    """
    ratios = []
    for i in range(rounds):
        pair = (call, base) if i % 2 == 0 else (base, call)
        seconds = [timed_rounds(fn, device, rounds=1, warmup=0)[0] for fn in pair]
        call_s, base_s = seconds if i % 2 == 0 else seconds[::-1]
        ratios.append(call_s / base_s)
    return ratios


def latency_summary(seconds: list[float]) -> dict:
    """Median and p90 (nearest rank over the sorted rounds) in milliseconds."""
    ordered = sorted(seconds)
    p90_index = min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)
    return dict(
        median_ms=statistics.median(ordered) * 1e3,
        p90_ms=ordered[p90_index] * 1e3,
        min_ms=ordered[0] * 1e3,
        rounds=len(ordered),
    )


@torch.no_grad()
def matmul_rate(device: torch.device, dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> dict:
    """The device's dense matmul rate in FLOP/s: the best of `repeats` square matmuls.

    Best, not median: the floor is what the device can do, and on shared CPUs a median mostly
    measures the neighbours.
    """
    if size is None:
        size = 8192 if device.type == "cuda" else 2048
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    times = timed_rounds(lambda: torch.mm(a, b), device, rounds=repeats, warmup=2)
    flops = 2 * size**3
    return dict(
        flop_per_s=flops / min(times),
        median_flop_per_s=flops / statistics.median(times),
        size=size,
        dtype=str(dtype).removeprefix("torch."),
    )


class RowTimeout(Exception):
    """A row ran past its time limit."""


@contextmanager
def deadline(seconds: float | None):
    """Raise RowTimeout in the main thread once `seconds` have passed (None or 0: no limit).

    The alarm lands when Python next runs, so a long kernel finishes first; the shell script
    around the suite keeps a hard limit too.
    """
    if not seconds:
        yield
        return

    def on_alarm(signum, frame):
        raise RowTimeout(f"ran past its {seconds:g} s limit")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
