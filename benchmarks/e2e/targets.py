"""The issue's targets, checked against a run's results. Reported, never asserted."""

from __future__ import annotations

from dataclasses import dataclass

from .results import RunResults

__all__ = ["TARGETS", "Target", "TargetCheck", "check_targets", "paired_comparisons"]


@dataclass(frozen=True)
class Target:
    device: str  # "cpu" or "cuda": where the target applies
    description: str
    row: str
    metric: str  # a RowResult attribute: median_ms, peak_bytes, x_of_floor
    threshold: float
    over: str | None = None  # the row the metric is divided by; None: the metric itself
    batch: int | None = None  # None: every batch size measured


TARGETS = (
    Target("cpu", "e's UNet part <= 0.6x of the 4-step loop's UNet part (e-unet / b-unet)",
           "e-unet", "median_ms", 0.6, over="b-unet"),
    Target("cpu", "e <= d: tiue eager no slower than the paper's way, end to end (e / d)", "e", "median_ms", 1.0, over="d"),
    Target("cpu", "e's UNet part <= the paper's way's (e-unet / d-unet)", "e-unet", "median_ms", 1.0, over="d-unet"),
    Target("cpu", "f <= 0.8x of the paper's way, end to end (f / d)", "f", "median_ms", 0.8, over="d"),
    Target("cpu", "f <= 0.85x of e: the fast path earns its compile (f / e)", "f", "median_ms", 0.85, over="e"),
    # The GPU targets of the issue that asked for benchmarks/gpu_check.sh (batch 1, 512 px, fp16).
    Target("cuda", "f <= 0.5x of c, end to end (f / c)", "f", "median_ms", 0.5, over="c", batch=1),
    Target("cuda", "f <= 0.25x of d, the paper's way, end to end (f / d)", "f", "median_ms", 0.25, over="d", batch=1),
    Target("cuda", "f's UNet part <= 2.0x of one compiled full-UNet pass (f-unet / c-unet-compiled)",
           "f-unet", "median_ms", 2.0, over="c-unet-compiled", batch=1),
    Target("cuda", "f's peak memory <= 1.15x of c's (f / c)", "f", "peak_bytes", 1.15, over="c", batch=1),
)


@dataclass
class TargetCheck:
    target: Target
    batch: int | None
    value: float | None  # the ratio (or the metric itself), None when not measured
    status: str  # met | not met | unclear | not measured | <device> target: for information
    # For latency targets, the same ratio of the fastest rounds, and the median ratio of the two
    # rows timed in alternation; on a shared machine these show how much of a ratio of medians
    # is the neighbours' load. The status follows the paired ratio when there is one.
    value_of_minimums: float | None = None
    paired_value: float | None = None

    def as_dict(self) -> dict:
        t = self.target
        return dict(device=t.device, target=t.description, threshold=t.threshold, batch=self.batch,
                    value=self.value, value_of_minimums=self.value_of_minimums,
                    paired_value=self.paired_value, status=self.status)


def _value(results: RunResults, target: Target, batch: int, metric: str | None = None) -> float | None:
    metric = metric or target.metric
    result = results.get(target.row, batch)
    value = None if result is None else getattr(result, metric)
    if value is None or target.over is None:
        return value
    base = results.get(target.over, batch)
    base_value = None if base is None else getattr(base, metric)
    return value / base_value if base_value else None


def _attempted(results: RunResults, target: Target, batch: int) -> bool:
    """Whether the run tried every row the target needs at this batch size (ok or not)."""
    needed = {target.row} | ({target.over} if target.over else set())
    return needed <= {r.row for r in results.rows if r.batch == batch}


def check_targets(results: RunResults, device_type: str) -> list[TargetCheck]:
    """One check per target and batch size; a target whose rows the run did not try at any
    batch size is still listed once, as not measured."""
    checks = []
    batches = sorted({r.batch for r in results.rows})
    for target in TARGETS:
        tried = [b for b in ([target.batch] if target.batch is not None else batches)
                 if _attempted(results, target, b)]
        if not tried:
            checks.append(TargetCheck(target, target.batch, None, "not measured"))
            continue
        for batch in tried:
            value = _value(results, target, batch)
            latency = target.metric == "median_ms" and target.over is not None
            of_minimums = _value(results, target, batch, "min_ms") if latency else None
            paired = results.paired_ratio(target.row, target.over, batch) if latency else None
            decisive = paired if paired is not None else value
            spread = results.paired_spread(target.row, target.over, batch) if latency else None
            if decisive is None:
                status = "not measured"
            elif target.device != device_type:
                status = f"{target.device.upper()} target: for information"
            elif spread is not None and spread[0] <= target.threshold < spread[1]:
                status = "unclear"  # the paired rounds' middle half straddles the limit
            else:
                status = "met" if decisive <= target.threshold else "not met"
            checks.append(TargetCheck(target, batch, value, status, of_minimums, paired))
    return checks


def paired_comparisons(results: RunResults) -> list[tuple[str, str, int]]:
    """(row, over, batch) for every latency-ratio target whose two rows both ran."""
    pairs = []
    for target in TARGETS:
        if target.metric != "median_ms" or target.over is None:
            continue
        batches = [target.batch] if target.batch is not None else sorted({r.batch for r in results.rows})
        pairs += [(target.row, target.over, b) for b in batches
                  if results.get(target.row, b) and results.get(target.over, b)]
    return list(dict.fromkeys(pairs))
