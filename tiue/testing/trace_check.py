"""Does the fast path's one pass trace as one graph under this process's torch?

Runs the SD and SDXL passes, unguided and guided, on tiny pipelines through the fast path with
its pass compiled by dynamo alone (`fullgraph=True`, `backend="eager"`: no inductor, so it is
cheap and needs no compiler): a construct this torch's dynamo cannot trace fails here exactly
as it would under inductor on a GPU. The guided case then runs a second guidance scale with
recompiles treated as errors (the scale is a graph input, not a constant).

`python -m tiue.testing.trace_check` prints one line per case and exits 1 if any failed;
tools/torch_floor_check.py runs it under the oldest torch the README names.
"""

from __future__ import annotations

import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["CASES", "TraceCase", "build_pipeline", "main", "trace_case", "trace_only"]

PROMPTS = ["a red circle", "a blue square"]


@dataclass(frozen=True)
class TraceCase:
    model: str  # "sd" or "sdxl"
    guided: bool

    @property
    def name(self) -> str:
        return f"{self.model} {'guided' if self.guided else 'unguided'}"


CASES = tuple(TraceCase(model, guided) for model in ("sd", "sdxl") for guided in (False, True))


def build_pipeline(model: str, directory: str | Path):
    """A tiny TiUEPipeline ("sd") or TiUEXLPipeline ("sdxl") with random weights."""
    if model == "sd":
        from tiue import TiUEPipeline
        from tiue.testing.tiny import build_components

        pipe = TiUEPipeline(**build_components(directory))
    elif model == "sdxl":
        from tiue.pipeline_xl import TiUEXLPipeline
        from tiue.testing.tiny_xl import build_xl_components

        pipe = TiUEXLPipeline(**build_xl_components(directory))
    else:
        raise ValueError(f"model: expected 'sd' or 'sdxl', got {model!r}")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trace_only(pipe, **settings):
    """Enable the fast path with its pass compiled by dynamo only (fullgraph, eager backend),
    with `settings` (enable_fast_path's arguments but `compile`) and otherwise its defaults
    (fused projections, channels_last). Returns the fast path's stats."""
    stats = pipe.enable_fast_path(compile=False, **settings)
    fast = pipe._fast_path
    fast._run = torch.compile(fast.one_pass, fullgraph=True, dynamic=False, backend="eager")
    fast._compiled = True
    return stats


def trace_case(case: TraceCase, directory: str | Path) -> None:
    """Raise if the case's pass does not trace fullgraph, recompiles for a new guidance scale or
    differs from the uncompiled pass."""
    pipe = build_pipeline(case.model, directory)
    first, second = (4.5, 7.0) if case.guided else (1.0, 1.0)

    def sample(guidance_scale, seed=0):
        latents = torch.randn(len(PROMPTS), 4, 8, 8, generator=torch.Generator().manual_seed(seed))
        return pipe(PROMPTS, latents=latents, guidance_scale=guidance_scale, output_type="pt").images

    pipe.enable_fast_path(compile=False)
    expected = sample(second, seed=1)
    torch._dynamo.reset()
    trace_only(pipe)
    sample(first)
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = sample(second, seed=1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def main(argv: list[str] | None = None) -> int:
    print(f"torch {torch.__version__}: the one pass traced with fullgraph=True, backend='eager'")
    failed = 0
    with tempfile.TemporaryDirectory() as scratch:
        for case in CASES:
            try:
                trace_case(case, Path(scratch) / case.model)
            except Exception as error:  # noqa: BLE001 - every case runs; each failure is reported
                failed += 1
                first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
                print(f"FAIL {case.name}: {type(error).__name__}: {first_line}")
                traceback.print_exc(file=sys.stderr)
            else:
                print(f"ok   {case.name}")
    print(f"{len(CASES) - failed} traced, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
