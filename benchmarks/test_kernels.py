"""Kernel benchmarks: each tiue op against the plain PyTorch expression and torch.compile of it.

    python -m pytest benchmarks/test_kernels.py -q            # pytest-benchmark; cuda if present
    python -m pytest benchmarks/test_kernels.py --tiue-device cpu --tiue-kernels-full
    python benchmarks/test_kernels.py [--device cuda] [--full]   # same cases, no pytest needed

Sizes are Stable Diffusion's: K = 4 timesteps, 4x64x64 latents, batch B in {1, 8, 64}, and the
SD2.1-base decoder's cross-attention (head dim 64, 77 text tokens; 4096 queries x 5 heads,
1024 x 10, 256 x 20). On the CPU the default is modest (B in {1, 8}; attention at B = 1).
Variants: "tiue" (tiue.ops with automatic backend choice), "eager" (the plain PyTorch
expression), "compiled" (torch.compile of that expression); attention's eager baseline is
SDPA on key/values repeated K times, what a stock processor does with repeated text.
Reported: median time per call with quartiles, GB/s (TFLOP/s for attention). Nothing here
asserts a speed. Reports go to benchmarks/results/kernels-<device>.{json,csv,md}.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import Report, summarize  # noqa: E402

import tiue.ops  # noqa: E402
from tiue.ops.ddim_combine import ddim_combine_torch  # noqa: E402
from tiue.ops.gaussian_kl import gaussian_kl_stats_torch  # noqa: E402

try:  # the plain runner at the bottom works without pytest
    import pytest
except ImportError:  # pragma: no cover
    pytest = None

SUITE = "kernels"
STEPS = 4  # K
LATENT = (4, 64, 64)
TEXT_TOKENS = 77
HEAD_DIM = 64
ATTENTION_SIZES = ((4096, 5), (1024, 10), (256, 20))  # (query tokens, heads) per decoder level
COEFFS = [0.91, -0.12, 0.35, -0.4, 0.7]  # K+1 values; the numbers do not matter for speed
SCALE = 1 / 0.18215
TARGET_SECONDS_PER_CASE = {"cpu": 1.0, "cuda": 0.5}
MIN_ROUNDS = 5


@dataclass(frozen=True)
class Case:
    op: str
    size: str
    variant: str
    build: Callable[[torch.device, torch.dtype], tuple[Callable[[], object], float, float]]
    # build(device, dtype) -> (call, bytes moved per call, flops per call)

    @property
    def id(self) -> str:
        return f"{self.op}-{self.size}-{self.variant}".replace(" ", "").replace("=", "")


# -- the expressions being compared -----------------------------------------------------------


def _eager_ddim(noise, eps):
    return ddim_combine_torch(noise, eps, COEFFS, SCALE, noise.dtype)


def _eager_kl(x):
    return gaussian_kl_stats_torch(x)[0]


def _eager_attention(q, k, v):
    steps = q.shape[0]
    repeated_k = k.repeat(steps, 1, 1, 1)
    repeated_v = v.repeat(steps, 1, 1, 1)
    return F.scaled_dot_product_attention(q.flatten(0, 1), repeated_k, repeated_v)


_compiled: dict[str, Callable] = {}


def _compiled_fn(name: str, fn: Callable) -> Callable:
    # One torch.compile object per expression: later sizes recompile (then go dynamic) instead
    # of each size paying a fresh compile of its own.
    if name not in _compiled:
        _compiled[name] = torch.compile(fn)
    return _compiled[name]


def _variant_fn(variant: str, name: str, eager: Callable, ours: Callable) -> Callable:
    if variant == "tiue":
        return ours
    if variant == "eager":
        return eager
    return _compiled_fn(name, eager)


# -- cases ------------------------------------------------------------------------------------


def _ddim_case(batch: int, variant: str) -> Case:
    def build(device, dtype):
        noise = torch.randn(batch, *LATENT, device=device, dtype=dtype)
        eps = torch.randn(STEPS, batch, *LATENT, device=device, dtype=dtype)
        fn = _variant_fn(variant, "ddim", _eager_ddim,
                         lambda n, e: tiue.ops.ddim_combine(n, e, COEFFS, SCALE, dtype))
        moved = (STEPS + 2) * noise.numel() * noise.element_size()  # K+1 reads, one write
        return (lambda: fn(noise, eps)), moved, 0.0

    return Case("ddim_combine", f"B={batch}", variant, build)


def _kl_case(batch: int, variant: str, backward: bool) -> Case:
    def build(device, dtype):
        x = torch.randn(STEPS * batch, *LATENT, device=device, dtype=dtype, requires_grad=backward)
        fn = _variant_fn(variant, "kl", _eager_kl, tiue.ops.gaussian_kl)
        size = x.numel() * x.element_size()
        if not backward:
            return (lambda: fn(x)), size, 0.0

        def forward_backward():
            x.grad = None
            fn(x).sum().backward()

        return forward_backward, 3 * size, 0.0  # read x, read x, write dx

    op = "gaussian_kl fwd+bwd" if backward else "gaussian_kl"
    return Case(op, f"N=4x{batch}", variant, build)


def _attention_case(batch: int, tokens: int, heads: int, variant: str) -> Case:
    def build(device, dtype):
        # q as the TiUE processor produces it: (K*B, N, H*D) viewed as (K, B, H, N, D).
        q = torch.randn(STEPS, batch, tokens, heads, HEAD_DIM, device=device, dtype=dtype)
        q = q.permute(0, 1, 3, 2, 4)
        k = torch.randn(batch, heads, TEXT_TOKENS, HEAD_DIM, device=device, dtype=dtype)
        v = torch.randn_like(k)
        fn = _variant_fn(variant, "attention", _eager_attention, tiue.ops.shared_kv_attention)
        flops = 4.0 * STEPS * batch * heads * tokens * TEXT_TOKENS * HEAD_DIM
        return (lambda: fn(q, k, v)), 0.0, flops

    return Case("shared_kv_attention", f"B={batch} N={tokens} H={heads}", variant, build)


VARIANTS = ("tiue", "eager", "compiled")


def cases(device: torch.device, full: bool) -> list[Case]:
    """Every case, the compiled variants last.

    On a CPU, code compiled by inductor brings its own OpenMP thread pool, whose spinning
    threads then starve the eager ops' pool (eager ops measured up to 1000x slower after a
    torch.compile in the same process on 2 cores). Timing every compiled variant after all the
    others keeps that from skewing the eager and tiue rows.
    """
    batches = (1, 8, 64) if full else (1, 8)
    attention_batches = (1, 8, 64) if full and device.type == "cuda" else ((1, 8) if full else (1,))
    found: list[Case] = []
    for variants in (("tiue", "eager"), ("compiled",)):
        for batch in batches:
            found += [_ddim_case(batch, v) for v in variants]
        for batch in batches:
            found += [_kl_case(batch, v, backward=False) for v in variants]
        for batch in batches:
            found += [_kl_case(batch, v, backward=True) for v in variants]
        for batch in attention_batches:
            for tokens, heads in ATTENTION_SIZES:
                found += [_attention_case(batch, tokens, heads, v) for v in variants]
    return found


# -- timing -----------------------------------------------------------------------------------


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timed:
    """Calls `call` `inner` times per round, then waits for the device.

    `inner` is calibrated so one round lasts about a millisecond or more: a microsecond kernel
    is then timed over many back-to-back launches rather than one launch plus a sync.
    """

    def __init__(self, call: Callable[[], object], device: torch.device):
        self.call, self.device = call, device
        for _ in range(3):  # warm-up: compiles, autotunes, caches
            call()
        _synchronize(device)
        start = time.perf_counter()
        call()
        _synchronize(device)
        one = max(time.perf_counter() - start, 1e-7)
        self.inner = max(1, min(1000, int(1e-3 / one)))
        self.rounds = max(MIN_ROUNDS, int(TARGET_SECONDS_PER_CASE[device.type] / (one * self.inner)))
        self.rounds = min(self.rounds, 200)

    def __call__(self) -> None:
        for _ in range(self.inner):
            self.call()
        _synchronize(self.device)


def _dtype_for(device: torch.device, name: str | None) -> torch.dtype:
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in names:
        raise ValueError(f"dtype: expected one of {', '.join(names)}, got {name!r}")
    return names[name]


def _row(case: Case, dtype: torch.dtype, per_call_seconds: list[float], moved: float, flops: float) -> dict:
    row = {"op": case.op, "size": case.size, "variant": case.variant, "dtype": str(dtype).replace("torch.", "")}
    row.update(summarize(per_call_seconds))
    median = row["median_us"] * 1e-6
    row["gb_per_s"] = moved / median / 1e9 if moved else None
    row["tflop_per_s"] = flops / median / 1e12 if flops else None
    return row


def _backend_note() -> str:
    ops = tiue.ops.backend_info()["ops"]
    return ", ".join(f"{op}: cpu={d['cpu']} cuda={d['cuda']}" for op, d in ops.items())


# -- pytest-benchmark entry point -------------------------------------------------------------

if pytest is not None:

    def _device(config) -> torch.device:
        name = config.getoption("--tiue-device", default=None)
        name = name or ("cuda" if torch.cuda.is_available() else "cpu")
        if name == "cuda" and not torch.cuda.is_available():
            raise pytest.UsageError("--tiue-device cuda: no CUDA device is available")
        return torch.device(name)

    def pytest_generate_tests(metafunc):
        if "kernel_case" in metafunc.fixturenames:
            device = _device(metafunc.config)
            full = metafunc.config.getoption("--tiue-kernels-full", default=False) or device.type == "cuda"
            found = cases(device, full)
            metafunc.parametrize("kernel_case", found, ids=[c.id for c in found])

    class _SummaryPrinter:
        """Writes the report and prints its table when the session ends."""

        def __init__(self, report: Report, directory: Path):
            self.report, self.directory = report, directory

        def pytest_terminal_summary(self, terminalreporter):
            if not self.report.rows:
                return
            paths = self.report.write(self.directory)
            terminalreporter.write_line("")
            terminalreporter.write(self.report.markdown())
            terminalreporter.write_line("backends: " + _backend_note())
            terminalreporter.write_line("written: " + ", ".join(os.path.relpath(p) for p in paths))

    @pytest.fixture(scope="session")
    def kernel_report(request):
        device = _device(request.config)
        command = "pytest " + " ".join(request.config.invocation_params.args)
        report = Report(SUITE, device, command=command.strip())
        directory = Path(request.config.getoption("--tiue-results-dir", default=None)
                         or Path(__file__).parent / "results")
        request.config.pluginmanager.register(_SummaryPrinter(report, directory), "tiue-kernels-summary")
        return report

    def test_kernel(benchmark, kernel_case, kernel_report, request):
        device = kernel_report.device
        dtype = _dtype_for(device, request.config.getoption("--tiue-dtype", default=None))
        call, moved, flops = kernel_case.build(device, dtype)
        timed = Timed(call, device)
        benchmark.extra_info.update(inner_calls=timed.inner, op=kernel_case.op, size=kernel_case.size)
        benchmark.pedantic(timed, rounds=timed.rounds, iterations=1, warmup_rounds=1)
        if benchmark.stats is None:  # --benchmark-disable: nothing was timed
            return
        per_call = [t / timed.inner for t in benchmark.stats.stats.data]
        kernel_report.add(_row(kernel_case, dtype, per_call, moved, flops))


# -- plain runner (no pytest-benchmark needed) ------------------------------------------------


def run_plain(device: torch.device, full: bool, dtype: torch.dtype, directory: Path) -> Report:
    command = "python benchmarks/test_kernels.py " + " ".join(sys.argv[1:])
    report = Report(SUITE, device, command=command.strip())
    for case in cases(device, full):
        call, moved, flops = case.build(device, dtype)
        timed = Timed(call, device)
        timed()  # one untimed round, as the pytest path does
        samples = []
        for _ in range(timed.rounds):
            start = time.perf_counter()
            timed()
            samples.append((time.perf_counter() - start) / timed.inner)
        report.add(_row(case, dtype, samples, moved, flops))
        print(f"{case.id}: {report.rows[-1]['median_us']:.1f} us", flush=True)
    paths = report.write(directory)
    print()
    print(report.markdown())
    print("backends: " + _backend_note())
    print("written: " + ", ".join(str(p) for p in paths))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None)
    parser.add_argument("--full", action="store_true", help="SD-scale sizes on the CPU too")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default=None)
    parser.add_argument("--results-dir", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    full = args.full or device.type == "cuda"
    run_plain(device, full, _dtype_for(device, args.dtype), Path(args.results_dir))


if __name__ == "__main__":
    main()
