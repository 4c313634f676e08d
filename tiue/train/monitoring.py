"""What a run shows while it trains: a loss history, TensorBoard choice, the loss-curve PNG."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

from tiue.files import atomic_path

__all__ = ["LossHistory", "HistoryFile", "HISTORY_FILE", "resolve_report_to", "plot_loss_curve", "format_losses"]

HISTORY_FILE = "history.jsonl"

# Curves drawn in the loss-curve PNG, one panel each.
PLOTTED = ("loss/vsd", "loss/kl", "loss/lora")


def resolve_report_to(report_to: str | None) -> str:
    """"tensorboard" or "none"; None picks tensorboard when it is importable."""
    available = importlib.util.find_spec("tensorboard") is not None or importlib.util.find_spec("tensorboardX") is not None
    if report_to is None:
        return "tensorboard" if available else "none"
    if report_to == "tensorboard" and not available:
        raise ValueError("--report-to: tensorboard requested but not installed (pip install tensorboard), or pass none")
    return report_to


class LossHistory:
    """Per-step scalars of the run so far, restored from checkpoints on resume."""

    def __init__(self, records: list[dict] | None = None):
        self.records: list[dict] = list(records or [])

    def append(self, step: int, values: dict[str, float]) -> None:
        self.records.append({"step": step, **values})

    def truncate(self, step: int) -> None:
        self.records = [r for r in self.records if r["step"] <= step]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        pairs = [(r["step"], r[key]) for r in self.records if key in r and math.isfinite(r[key])]
        return [p[0] for p in pairs], [p[1] for p in pairs]


class HistoryFile:
    """OUTPUT/history.jsonl: the run's per-step scalars, one JSON line per step, only ever appended
    (checkpoints record their step, not the history, so they stay small however long the run).

    A resumed run first appends a marker {"resumed_at": STEP, ...}: the lines before it for later
    steps belong to steps it redoes (or to a line of the run it abandoned) and are not read back.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, record: dict) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def mark_resume(self, step: int, **details) -> None:
        self.append({"resumed_at": step, **details})

    def read(self, up_to_step: int | None = None) -> list[dict]:
        """The current line's records, in step order (up to `up_to_step`)."""
        records: list[dict] = []
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:  # the last line of a run killed mid-write
                    continue
                if "resumed_at" in entry:
                    records = [r for r in records if r["step"] <= entry["resumed_at"]]
                elif "step" in entry:
                    records.append(entry)
        return [r for r in records if up_to_step is None or r["step"] <= up_to_step]


def format_losses(values: dict[str, float]) -> dict[str, str]:
    return {key.split("/")[-1]: f"{value:.4g}" for key, value in values.items() if key.startswith("loss/")}


def plot_loss_curve(history: LossHistory, path: str | Path) -> bool:
    """Write the loss curves as a PNG (atomically); False when matplotlib is not installed."""
    if importlib.util.find_spec("matplotlib") is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(PLOTTED), figsize=(4 * len(PLOTTED), 3.2), squeeze=False)
    for axis, key in zip(axes[0], PLOTTED):
        steps, values = history.series(key)
        axis.plot(steps, values, linewidth=1)
        axis.set_title(key)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
    figure.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    return True
