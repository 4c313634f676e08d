"""Benchmark reports: device name, git revision, and results as JSON, CSV and a Markdown table.

Files are written under a temporary name and renamed when complete, so a run that dies never
leaves a half-written report behind.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
import platform
import re
import statistics
import subprocess
from collections.abc import Sequence
from pathlib import Path

import torch

__all__ = ["Report", "device_name", "git_revision", "report_stem", "summarize"]

ROOT = Path(__file__).resolve().parents[1]


def device_name(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3' for a GPU; the CPU model (and threads used) for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({torch.get_num_threads()} threads)"


def git_revision() -> str:
    """Short commit hash, '+dirty' when the work tree differs, or 'unknown' outside git."""
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        revision = git("rev-parse", "--short", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    try:
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        dirty = False
    return revision + ("+dirty" if dirty else "")


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median and quartiles of per-call times, in microseconds."""
    ordered = sorted(seconds)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "median_us": statistics.median(ordered) * 1e6,
        "q1_us": q1 * 1e6,
        "q3_us": q3 * 1e6,
        "rounds": len(ordered),
    }


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower()


def report_stem(suite: str, device: torch.device) -> str:
    """File name of a suite's report without extension, e.g. 'kernels-nvidia-h100-80gb-hbm3'."""
    return f"{_slug(suite)}-{_slug(device_name(device))}"


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


class Report:
    """Rows of one benchmark suite on one device.

    A row holds: op, size, variant, dtype, median_us, q1_us, q3_us, rounds and optionally
    gb_per_s and tflop_per_s. The Markdown table adds each variant's speed relative to the
    "eager" row of the same op and size.
    """

    COLUMNS = ("op", "size", "variant", "dtype", "median_us", "q1_us", "q3_us", "rounds", "device_us", "gb_per_s",
               "pct_of_peak_bandwidth", "tflop_per_s")

    def __init__(self, suite: str, device: torch.device, command: str = ""):
        self.suite = suite
        self.device = device
        self.device_name = device_name(device)
        self.revision = git_revision()
        self.command = command
        self.rows: list[dict] = []
        self.failures: list[str] = []

    def add(self, row: dict) -> None:
        self.rows.append({column: row.get(column) for column in self.COLUMNS})

    def metadata(self) -> dict:
        return {
            "suite": self.suite,
            "device": self.device_name,
            "device_type": self.device.type,
            "git_revision": self.revision,
            "torch": torch.__version__,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": self.command,
        }

    def markdown(self) -> str:
        meta = self.metadata()
        lines = [
            f"### {self.suite} on {meta['device']}",
            "",
            f"git {meta['git_revision']}, torch {meta['torch']}, {meta['date']}"
            + (f", `{self.command}`" if self.command else ""),
            "",
            "Host time: median wall time per call (the device synchronised per round); device time: "
            "CUDA-graph replay of back-to-back calls timed by CUDA events (blank on a CPU). GB/s and "
            "TFLOP/s use the device time when there is one; % peak: of the device's peak bandwidth "
            "(blank when the device is not in the table).",
            "",
            "| op | size | variant | dtype | host median (us) | IQR (us) | device (us) | GB/s | % peak BW | TFLOP/s | vs eager |",
            "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        def time_of(r):  # device time where measured: the speed-up compares like with like
            return r.get("device_us") or r["median_us"]

        eager = {(r["op"], r["size"]): time_of(r) for r in self.rows if r["variant"] == "eager"}
        for r in self._grouped_rows():
            baseline = eager.get((r["op"], r["size"]))
            speedup = f"{baseline / time_of(r):.2f}x" if baseline and time_of(r) else ""
            lines.append(
                f"| {r['op']} | {r['size']} | {r['variant']} | {r['dtype']} "
                f"| {r['median_us']:.1f} | {r['q3_us'] - r['q1_us']:.1f} | {_fmt(r.get('device_us'), 2)} "
                f"| {_fmt(r['gb_per_s'])} | {_fmt(r.get('pct_of_peak_bandwidth'))} | {_fmt(r['tflop_per_s'], 3)} | {speedup} |"
            )
        return "\n".join(lines) + "\n"

    def _grouped_rows(self) -> list[dict]:
        """Rows of one op and size together, groups in order of first appearance."""
        groups: dict[tuple, list[dict]] = {}
        for row in self.rows:
            groups.setdefault((row["op"], row["size"]), []).append(row)
        return [row for group in groups.values() for row in group]

    def write(self, directory: Path) -> list[Path]:
        """Write <suite>-<device>.json/.csv/.md under `directory`; returns the paths."""
        stem = f"{_slug(self.suite)}-{_slug(self.device_name)}"  # as report_stem()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=self.COLUMNS)
        writer.writeheader()
        writer.writerows(self.rows)
        outputs = {
            directory / f"{stem}.json": json.dumps({**self.metadata(), "rows": self.rows}, indent=2),
            directory / f"{stem}.csv": buffer.getvalue(),
            directory / f"{stem}.md": self.markdown(),
        }
        for path, text in outputs.items():
            _write_atomically(path, text)
        return list(outputs)


def _fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"
