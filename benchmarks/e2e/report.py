"""Writing a run's results: JSON, CSV, a Markdown table with the targets, a PNG bar chart.

Every file is written under a temporary name and renamed when complete, so a run that is
stopped part way leaves the previous complete files, never half-written ones.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

from .results import RowResult, RunResults
from .rows import ROWS
from .targets import check_targets

__all__ = ["markdown_report", "write_reports", "result_stem"]

MIB = 2**20


def result_stem(meta: dict) -> str:
    """<device>-<scale>: "cpu-small", "nvidia-h100-80gb-hbm3-sd21"."""
    return f"{meta['device_slug']}-{meta['scale']}"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _ordered(rows: list[RowResult]) -> list[RowResult]:
    order = {key: i for i, key in enumerate(ROWS)}
    return sorted(rows, key=lambda r: (order.get(r.row, len(order)), r.batch))


def _load(meta: dict, when: str) -> str:
    value = meta.get(f"load_average_at_{when}")
    return "-" if not value else f"{value[0]:.1f}"


def _fmt(value, digits: int = 1, scale: float = 1.0) -> str:
    if value is None:
        return "-"
    return f"{value / scale:,.{digits}f}"


TABLE_COLUMNS = (
    "row", "batch", "median ms", "p90 ms", "images/s", "peak MiB", "compile s", "capture s",
    "GFLOP/image", "floor ms", "x of floor",
)


def _table_line(r: RowResult) -> list[str]:
    if not r.ok:
        return [r.row, str(r.batch), f"{r.status}: {r.reason}"] + [""] * (len(TABLE_COLUMNS) - 3)
    return [
        r.row, str(r.batch), _fmt(r.median_ms), _fmt(r.p90_ms), _fmt(r.images_per_s, 2),
        _fmt(r.peak_bytes, 1, MIB), _fmt(r.compile_s), _fmt(r.capture_s),
        _fmt(r.gflop_per_image, 2), _fmt(r.floor_ms), _fmt(r.x_of_floor, 2),
    ]


def _markdown_table(header, lines) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def markdown_report(results: RunResults) -> str:
    meta = results.meta
    rate = meta["matmul"]
    peak_kind = next((r.peak_kind for r in results.rows if r.peak_kind), "-")
    parts = [
        f"# End-to-end latency: {meta['device_name']}, scale {meta['scale']}, {meta['dtype']}",
        "",
        f"{meta['image_size']}x{meta['image_size']} px ({meta['latent_size']}x{meta['latent_size']} "
        f"latents), random weights, git {meta['git_revision']}, torch {meta['torch']}, "
        f"diffusers {meta['diffusers']}, {meta['threads']} CPU threads, {meta['timestamp']}; "
        f"load average {_load(meta, 'start')} at the start, {_load(meta, 'end')} at the end "
        f"(on {meta.get('cpu_count', '?')} cores: other work on the machine slows every row).",
        f"Dense matmul rate measured in this run: {rate['flop_per_s'] / 1e9:,.1f} GFLOP/s "
        f"({rate['dtype']}, {rate['size']}^3; the best of {len(meta.get('matmul_measurements', [rate]))} "
        f"measurements, each the fastest of its repeats). Floor = counted FLOPs / that rate. "
        f"Peak memory: {peak_kind}.",
        "",
        _markdown_table(TABLE_COLUMNS, [_table_line(r) for r in _ordered(results.rows)]),
        "",
        "## Rows",
        "",
    ]
    parts += [f"- **{key}**: {row.label}" for key, row in ROWS.items()
              if any(r.row == key for r in results.rows)]
    parts += ["", "## Targets", ""]
    checks = check_targets(results, meta["device_type"])
    parts.append(_markdown_table(
        ("target", "batch", "ratio of medians", "of fastest rounds", "paired rounds", "status"),
        [[c.target.description, str(c.batch or "-"), _ratio(c, c.value), _ratio(c, c.value_of_minimums),
          _ratio(c, c.paired_value), c.status] for c in checks],
    ))
    parts += ["", "Paired rounds: the two rows timed in alternation, back to back; the status follows "
              "them where they exist, since on a shared machine they carry less of the load's drift."]
    notes = sorted({f"{r.row}: {n}" for r in results.rows for n in r.notes})
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


def _ratio(check, value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}x" if check.target.over else f"{value:.3f}"


def _csv_text(results: RunResults) -> str:
    buffer = io.StringIO()
    fields = [k for k in RowResult.__dataclass_fields__ if k not in ("round_ms", "notes")] + ["gflop_per_image"]
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    for r in _ordered(results.rows):
        writer.writerow(r.as_dict())
    return buffer.getvalue()


def _bar_chart_png(results: RunResults) -> bytes | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = [r for r in _ordered(results.rows) if r.ok]
    keys = list(dict.fromkeys(r.row for r in rows))
    batches = sorted({r.batch for r in rows})
    if not keys:
        return None
    width = 0.8 / len(batches)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(keys) + 2), 4.5))
    for i, batch in enumerate(batches):
        xs, medians, p90s = [], [], []
        for x, key in enumerate(keys):
            r = results.get(key, batch)
            if r is not None:
                xs.append(x + (i - (len(batches) - 1) / 2) * width)
                medians.append(r.median_ms)
                p90s.append(r.p90_ms - r.median_ms)
        ax.bar(xs, medians, width, yerr=[[0] * len(p90s), p90s], capsize=2, label=f"batch {batch}")
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("latency per call, ms (median; whisker to p90)")
    meta = results.meta
    ax.set_title(f"{meta['device_name']}, {meta['scale']}, {meta['dtype']}, {meta['image_size']} px", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_reports(results: RunResults, directories: list[Path]) -> list[Path]:
    """Write <stem>.json, .csv, .md and .png into each directory; returns the paths written."""
    stem = result_stem(results.meta)
    payload = dict(results.as_dict(), targets=[c.as_dict() for c in check_targets(results, results.meta["device_type"])])
    files = {
        ".json": json.dumps(payload, indent=2, default=str).encode() + b"\n",
        ".csv": _csv_text(results).encode(),
        ".md": markdown_report(results).encode(),
    }
    png = _bar_chart_png(results)
    if png is not None:
        files[".png"] = png
    written = []
    for directory in directories:
        directory.mkdir(parents=True, exist_ok=True)
        for suffix, data in files.items():
            path = directory / f"{stem}{suffix}"
            _write_atomically(path, data)
            written.append(path)
    return written
