"""One measured row and the whole run's results, as plain data."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["RowResult", "RunResults"]


@dataclass
class RowResult:
    row: str
    label: str
    batch: int
    status: str = "ok"  # ok | skipped | failed | timed out
    reason: str | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    min_ms: float | None = None
    rounds: int | None = None
    round_ms: list[float] = field(default_factory=list)
    images_per_s: float | None = None
    peak_bytes: int | None = None
    peak_kind: str | None = None
    setup_s: float | None = None
    compile_s: float | None = None
    capture_s: float | None = None
    flops: int | None = None
    floor_ms: float | None = None
    x_of_floor: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def gflop_per_image(self) -> float | None:
        return None if self.flops is None else self.flops / self.batch / 1e9

    def as_dict(self) -> dict:
        return dict(asdict(self), gflop_per_image=self.gflop_per_image)


@dataclass
class RunResults:
    """What one pytest session measured: its settings and environment, then the rows."""

    meta: dict
    rows: list[RowResult] = field(default_factory=list)
    # Ratios of two rows timed in alternation: {"row", "over", "batch", "ratio", "ratios"}.
    paired: list[dict] = field(default_factory=list)

    def add(self, result: RowResult) -> None:
        self.rows = [r for r in self.rows if (r.row, r.batch) != (result.row, result.batch)]
        self.rows.append(result)
        self._apply_floor(result)

    def record_matmul_rate(self, measurement: dict) -> None:
        """Keep the best dense matmul rate measured so far and re-derive every row's floor.

        Best, not latest: the floor is what the device can do, and on a shared machine a
        measurement taken while the neighbours are busy understates it.
        """
        measurements = self.meta.setdefault("matmul_measurements", [])
        measurements.append(measurement)
        self.meta["matmul"] = max(measurements, key=lambda m: m["flop_per_s"])
        for result in self.rows:
            self._apply_floor(result)

    def _apply_floor(self, result: RowResult) -> None:
        rate = self.meta.get("matmul", {}).get("flop_per_s")
        if result.flops is None or not rate:
            return
        result.floor_ms = result.flops / rate * 1e3
        result.x_of_floor = result.median_ms / result.floor_ms if result.median_ms and result.floor_ms else None

    def get(self, row: str, batch: int) -> RowResult | None:
        for result in self.rows:
            if result.row == row and result.batch == batch and result.ok:
                return result
        return None

    def paired_ratio(self, row: str, over: str, batch: int) -> float | None:
        for entry in self.paired:
            if (entry["row"], entry["over"], entry["batch"]) == (row, over, batch):
                return entry["ratio"]
        return None

    def paired_spread(self, row: str, over: str, batch: int) -> tuple[float, float] | None:
        """The first and third quartiles of the paired rounds' ratios (None without them)."""
        for entry in self.paired:
            if (entry["row"], entry["over"], entry["batch"]) == (row, over, batch) and len(entry["ratios"]) >= 4:
                ordered = sorted(entry["ratios"])
                return ordered[len(ordered) // 4], ordered[(3 * len(ordered)) // 4]
        return None

    def as_dict(self) -> dict:
        return dict(meta=self.meta, rows=[r.as_dict() for r in self.rows], paired=self.paired)
