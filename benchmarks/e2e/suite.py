"""One benchmark session: the models, the matmul rate, measuring each (row, batch), the files."""

from __future__ import annotations

import os
import statistics
import traceback
from pathlib import Path

import torch

from .config import SuiteConfig
from .environment import run_metadata
from .measure import (
    RowTimeout, deadline, graph_pools, latency_summary, matmul_rate, paired_ratios, peak_memory_bytes,
    synchronize, timed_rounds,
)
from .models import build_models
from .report import markdown_report, write_reports
from .results import RowResult, RunResults
from .rows import ROWS, FastPathUnavailable, PreparedRow, RowFactory
from .targets import paired_comparisons

__all__ = ["EndToEndSuite", "RowSkipped"]


class RowSkipped(Exception):
    """The row could not run here (not built yet, or out of time); the reason is reported."""


# TIUE_E2E_COMPILE_BACKEND=eager: every torch.compile in the session (the compiled rows' and the
# fast path's) traces with dynamo, fullgraph as asked, and runs the traced graph eagerly: the
# dry run of benchmarks/gpu_check.sh exercises every compiled row's code path without minutes
# of inductor C++ compiles on a CPU. Its timings are then not the compiled ones.
COMPILE_BACKEND_VAR = "TIUE_E2E_COMPILE_BACKEND"


def use_compile_backend(name: str | None) -> None:
    if not name or name == "inductor":
        return
    if getattr(torch.compile, "_tiue_backend", None) == name:
        return
    original = torch.compile

    def compile_with(model=None, **kwargs):
        kwargs.pop("mode", None)
        kwargs.pop("options", None)
        kwargs["backend"] = name
        return original(model, **kwargs) if model is not None else original(**kwargs)

    compile_with._tiue_backend = name
    torch.compile = compile_with


class EndToEndSuite:
    def __init__(self, config: SuiteConfig):
        self.config = config
        use_compile_backend(os.environ.get(COMPILE_BACKEND_VAR))
        if config.threads:
            torch.set_num_threads(config.threads)
        self.models = build_models(config.scale, config.device, config.dtype)
        self.rows = RowFactory(self.models, config.image_size, fast_backend=config.fast_backend)
        meta = run_metadata(config.device)
        meta.update(
            scale=config.scale,
            dtype=config.dtype_name,
            image_size=config.image_size,
            latent_size=self.rows.latent_size,
            weights_mib=self.models.parameter_bytes() / 2**20,
            load_average_at_start=os.getloadavg(),
            settings=dict(
                batch_sizes=config.batch_sizes, teacher_batch_sizes=config.teacher_batch_sizes,
                rounds=config.rounds, teacher_rounds=config.teacher_rounds, warmup=config.warmup,
                compiled_batch_sizes=config.compiled_batch_sizes, row_timeout=config.row_timeout,
                rows=config.rows,
            ),
        )
        self.results = RunResults(meta)
        self.measure_matmul_rate()
        self.written: list[Path] = []
        self.prepared: dict[tuple[str, int], PreparedRow] = {}
        self.row_pools: dict[str, set] = {}

    def measure_matmul_rate(self) -> None:
        """The floor's rate: fp16 (the run's dtype) on a GPU, fp32 on a CPU. Measured at the
        start and again at the end of the session; the better one counts."""
        device = self.config.device
        dtype = self.config.dtype if device.type == "cuda" else torch.float32
        self.results.record_matmul_rate(matmul_rate(device, dtype))

    def run(self, key: str, batch: int, benchmark=None) -> RowResult:
        """Measure one row at one batch size, record it (whatever happens) and rewrite the files.

        Raises RowSkipped when the row cannot run here; other errors propagate after recording.
        The row timer covers the measurement only: a cold compile or a graph capture can take
        minutes, and an alarm must never land inside dynamo or a capture.
        """
        row = ROWS[key]
        result = RowResult(row=key, label=row.label, batch=batch)
        try:
            prepared = self._prepare(result, batch)
            with deadline(self.config.row_timeout):
                self._measure(result, prepared, batch, benchmark)
        except FastPathUnavailable as error:
            result.status, result.reason = "skipped", str(error)
            raise RowSkipped(str(error)) from None
        except RowTimeout as error:
            result.status, result.reason = "timed out", str(error)
            raise RowSkipped(f"{key} at batch {batch} {error}") from None
        except Exception as error:
            result.status = "failed"
            result.reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]
            # The last frames and the whole message (dynamo's explanation is several lines long).
            lines = [line for line in traceback.format_exc(limit=-6).splitlines() if line.strip()]
            result.notes.append("traceback tail: " + " | ".join(lines[-24:])[:3000])
            raise
        finally:
            self.results.add(result)
            self.write()
        return result

    def _prepare(self, result: RowResult, batch: int) -> PreparedRow:
        """Build the row's models and calls (compile and capture included), untimed."""
        pools_before = graph_pools()
        prepared = self.rows.prepare(result.row, batch)
        # The CUDA graphs this row captured while it was prepared are its own.
        self.row_pools[result.row] = self.row_pools.get(result.row, set()) | (graph_pools() - pools_before)
        self.prepared[(result.row, batch)] = prepared
        result.setup_s = prepared.setup_seconds
        result.compile_s, result.capture_s = prepared.compile_seconds, prepared.capture_seconds
        result.notes.extend(prepared.notes)
        return prepared

    def _measure(self, result: RowResult, prepared: PreparedRow, batch: int, benchmark) -> None:
        config, device = self.config, self.config.device
        teacher = ROWS[result.row].teacher
        result.flops = prepared.flops()
        if prepared.memory_call is not None:
            result.peak_bytes, result.peak_kind = peak_memory_bytes(
                prepared.memory_call, device, prepared.modules, self.row_pools.get(result.row, ()))
        synchronize(device)

        rounds = config.teacher_rounds if teacher else config.rounds
        warmup = config.teacher_warmup if teacher else config.warmup
        seconds = self._time(prepared.call, rounds, warmup, benchmark, group=f"batch {batch}")
        summary = latency_summary(seconds)
        result.median_ms, result.p90_ms = summary["median_ms"], summary["p90_ms"]
        result.min_ms, result.rounds = summary["min_ms"], summary["rounds"]
        result.round_ms = [s * 1e3 for s in seconds]
        result.images_per_s = batch / (result.median_ms / 1e3)
        if benchmark is not None:
            extra = ("round_ms", "notes", "label", "floor_ms", "x_of_floor")  # the floor comes at the end
            benchmark.extra_info.update({k: v for k, v in result.as_dict().items() if k not in extra})

    def _time(self, call, rounds: int, warmup: int, benchmark, group: str) -> list[float]:
        """Through pytest-benchmark's pedantic mode when it is active, else a plain loop."""
        device = self.config.device
        if benchmark is None or getattr(benchmark, "disabled", False):
            return timed_rounds(call, device, rounds, warmup)
        benchmark.group = group

        def synced_call():
            call()
            synchronize(device)

        benchmark.pedantic(synced_call, rounds=rounds, warmup_rounds=warmup, iterations=1)
        return list(benchmark.stats.stats.data)

    def run_paired(self) -> list[dict]:
        """Time each pair of rows a latency target compares in alternation; record the ratios."""
        rounds = max(7, self.config.rounds)  # enough pairs for a spread (quartiles)
        for row, over, batch in paired_comparisons(self.results):
            if (row, batch) not in self.prepared or (over, batch) not in self.prepared:
                continue
            try:
                with deadline(self.config.row_timeout):
                    ratios = paired_ratios(self.prepared[(row, batch)].call, self.prepared[(over, batch)].call,
                                           self.config.device, rounds)
            except RowTimeout:
                continue
            entry = dict(row=row, over=over, batch=batch, ratio=statistics.median(ratios), ratios=ratios)
            self.results.paired = [p for p in self.results.paired
                                   if (p["row"], p["over"], p["batch"]) != (row, over, batch)] + [entry]
            self.write()
        return self.results.paired

    def finish(self) -> None:
        """Measure the matmul rate once more (the floor uses the better one) and write the files."""
        if self.results.rows:
            try:
                with deadline(self.config.row_timeout):
                    self.measure_matmul_rate()
            except RowTimeout:
                pass  # the start-of-session measurement stands
        self.write()

    def write(self) -> None:
        self.results.meta["load_average_at_end"] = os.getloadavg()
        self.written = write_reports(self.results, list(self.config.results_dirs))

    def markdown(self) -> str:
        return markdown_report(self.results)
