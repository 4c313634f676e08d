"""Metrics as a Markdown table and as JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tiue.files import write_text_atomically

__all__ = ["format_table", "write_json", "COLUMNS"]

# (key, header, format)
COLUMNS = (
    ("fid", "FID ↓", "{:.2f}"),
    ("precision", "Precision ↑", "{:.3f}"),
    ("recall", "Recall ↑", "{:.3f}"),
    ("f1", "F1 ↑", "{:.3f}"),
    ("density", "Density ↑", "{:.3f}"),
    ("coverage", "Coverage ↑", "{:.3f}"),
    ("accuracy", "Accuracy ↑", "{:.3f}"),
    ("seconds_per_image", "CPU ms/image", None),
)


def _cell(key: str, fmt: str | None, value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "seconds_per_image":
        return f"{1000 * value:.2f}"
    return fmt.format(value)


def format_table(rows: list[tuple[str, dict]], first_header: str = "Model") -> str:
    """A Markdown table: one row per (label, metrics)."""
    header = "| " + " | ".join([first_header, *(h for _, h, _ in COLUMNS)]) + " |"
    rule = "|" + "|".join(["---"] + ["---:"] * len(COLUMNS)) + "|"
    lines = [header, rule]
    for label, metrics in rows:
        cells = [_cell(k, f, metrics.get(k)) for k, _, f in COLUMNS]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    return "\n".join(lines)


def write_json(path: str | Path, metrics: dict) -> None:
    write_text_atomically(path, json.dumps(metrics, indent=2, sort_keys=True, default=str) + "\n")
