"""The suite's settings, from the `--tiue-*` pytest options (declared in benchmarks/conftest.py),
with per-device defaults.

CPU defaults keep the whole suite under 10 minutes on two shared cores: small scale, batch 1
and 4, 3 rounds, the 50-step teacher row at batch 1 only, one compiled row (f) at batch 1, one
thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .models import SCALES, default_image_size
from .rows import ROWS

__all__ = ["SuiteConfig", "DTYPES", "RUN_ORDER"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# Run order: the cheap rows and the ones the targets need first, so that a run stopped by a
# time limit still has them; the 50-step teacher and the extra compile come last.
RUN_ORDER = ("c", "b", "e", "d", "c-unet", "b-unet", "d-unet", "e-unet", "f", "f-unet", "c-unet-compiled", "c-compiled",
             "a")
# Each compiled row costs minutes of inductor C++ compile per batch size on a CPU: by default
# the CPU run compiles only f (which the CPU target needs), at batch 1.
CPU_DEFAULT_SKIP = ("c-unet-compiled", "f-unet", "c-compiled")


def _ints(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise ValueError(f"{option}: expected comma-separated positive integers, got {text!r}")
    return values


@dataclass(frozen=True)
class SuiteConfig:
    scale: str
    device: torch.device
    dtype_name: str
    image_size: int
    batch_sizes: tuple[int, ...]
    teacher_batch_sizes: tuple[int, ...]
    compiled_batch_sizes: tuple[int, ...]
    rows: tuple[str, ...]
    rounds: int
    teacher_rounds: int
    warmup: int
    teacher_warmup: int
    row_timeout: float
    threads: int | None
    fast_backend: str | None
    results_dirs: tuple[Path, ...]

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name]

    @classmethod
    def from_pytest(cls, config) -> SuiteConfig:
        def opt(name):
            return config.getoption(name)

        scale = opt("--tiue-scale") or "small"
        if scale not in SCALES:
            raise ValueError(f"--tiue-scale: expected one of {', '.join(SCALES)}, got {scale!r}")
        device = torch.device(opt("--tiue-device") or ("cuda" if torch.cuda.is_available() else "cpu"))
        on_cuda = device.type == "cuda"
        dtype_name = opt("--tiue-dtype") or ("fp16" if on_cuda else "fp32")
        if dtype_name not in DTYPES:
            raise ValueError(f"--tiue-dtype: expected one of {', '.join(DTYPES)}, got {dtype_name!r}")
        rows = opt("--tiue-rows")
        if rows:
            rows = tuple(r.strip() for r in rows.split(",") if r.strip())
            unknown = [r for r in rows if r not in ROWS]
            if unknown:
                raise ValueError(f"--tiue-rows: unknown rows {unknown}; known: {', '.join(ROWS)}")
        else:
            rows = tuple(r for r in RUN_ORDER if on_cuda or r not in CPU_DEFAULT_SKIP)
        batch_text = opt("--tiue-batch-sizes") or ("1,4,16" if on_cuda else "1,4")
        root = Path(config.rootpath)
        dirs = [Path(opt("--tiue-results-dir") or root / "benchmarks" / "results")]
        if opt("--tiue-extra-results-dir"):
            dirs.append(Path(opt("--tiue-extra-results-dir")))
        return cls(
            scale=scale,
            device=device,
            dtype_name=dtype_name,
            image_size=int(opt("--tiue-image-size") or default_image_size(scale)),
            batch_sizes=_ints(batch_text, "--tiue-batch-sizes"),
            teacher_batch_sizes=_ints(opt("--tiue-teacher-batch-sizes") or "1", "--tiue-teacher-batch-sizes"),
            compiled_batch_sizes=_ints(
                opt("--tiue-compiled-batch-sizes") or (batch_text if on_cuda else "1"),
                "--tiue-compiled-batch-sizes",
            ),
            rows=rows,
            rounds=int(opt("--tiue-rounds") or (20 if on_cuda else 3)),
            teacher_rounds=int(opt("--tiue-teacher-rounds") or (3 if on_cuda else 2)),
            # On CPU the untimed run that counts FLOPs and memory is the warm-up.
            warmup=int(opt("--tiue-warmup") if opt("--tiue-warmup") is not None else (3 if on_cuda else 0)),
            teacher_warmup=1 if on_cuda else 0,
            row_timeout=float(opt("--tiue-row-timeout") or 0),
            # One thread on a CPU: on shared cores, OpenMP threads that wait on each other turn
            # every other process's load into 10x slower, erratic rows.
            threads=int(opt("--tiue-threads") or (0 if on_cuda else 1)) or None,
            fast_backend=opt("--tiue-fast-backend"),
            results_dirs=tuple(dirs),
        )

    def cases(self) -> list[tuple[str, int]]:
        """(row, batch) pairs in run order: batch-major, so batch 1 completes first."""
        batches = sorted(set(self.batch_sizes) | set(self.teacher_batch_sizes) | set(self.compiled_batch_sizes))
        return [(row, batch) for batch in batches for row in self.rows if batch in self.batch_sizes_of(row)]

    def batch_sizes_of(self, row: str) -> tuple[int, ...]:
        if ROWS[row].teacher:
            return self.teacher_batch_sizes
        if ROWS[row].compiled:
            return self.compiled_batch_sizes
        return self.batch_sizes
