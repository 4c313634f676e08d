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
from tiue.ops import dispatch  # noqa: E402
from tiue.ops.ddim_combine import ddim_combine_torch  # noqa: E402
from tiue.ops.gaussian_kl import gaussian_kl_stats_torch  # noqa: E402
from tiue.ops.shared_kv_attention import shared_kv_attention_sdpa  # noqa: E402

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
        return f"{self.op}-{self.size}-{self.variant}".replace(" ", "").replace("=", "").replace(":", "-")


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
    if variant in FORCED:
        return _forced(variant.removeprefix("tiue:"), ours)
    return _compiled_fn(name, eager)


def _forced(backend: str, ours: Callable) -> Callable:
    """tiue's op with TIUE_KERNELS=backend for the call: the kernels CUDA does not choose by
    default (gaussian_kl, attention) are measured too, never silently replaced."""

    def call(*args):
        before = os.environ.get(dispatch.ENV_VAR)
        os.environ[dispatch.ENV_VAR] = backend
        try:
            return ours(*args)
        finally:
            if before is None:
                del os.environ[dispatch.ENV_VAR]
            else:
                os.environ[dispatch.ENV_VAR] = before

    return call


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
        if variant in SDPA_LAYOUTS:  # SDPA on one of the two layouts the op's SDPA backend can take
            layout = variant.removeprefix("sdpa:")
            fn = lambda q, k, v: shared_kv_attention_sdpa(q, k, v, None, layout)  # noqa: E731
        else:
            fn = _variant_fn(variant, "attention", _eager_attention, tiue.ops.shared_kv_attention)
        flops = 4.0 * STEPS * batch * heads * tokens * TEXT_TOKENS * HEAD_DIM
        return (lambda: fn(q, k, v)), 0.0, flops

    return Case("shared_kv_attention", f"B={batch} N={tokens} H={heads}", variant, build)


VARIANTS = ("tiue", "eager", "compiled")
FORCED = ("tiue:triton", "tiue:cuda")  # tiue's op with TIUE_KERNELS forcing one backend
# Attention only: SDPA with the K groups folded into the query axis (keys and values once, q
# copied unless B == 1) and with keys and values expanded to the K*B batch.
SDPA_LAYOUTS = ("sdpa:folded", "sdpa:expanded")
OPS_BY_BACKEND = {  # which ops each forcible backend implements (tiue.ops.backend_info()["implemented"])
    "triton": ("ddim_combine", "gaussian_kl", "gaussian_kl fwd+bwd", "shared_kv_attention"),
    "cuda": ("ddim_combine", "gaussian_kl", "gaussian_kl fwd+bwd"),
}


def forced_backends(device: torch.device) -> tuple[str, ...]:
    """The kernel backends that can run on `device` here (each gets forced rows)."""
    return tuple(b for b in ("triton", "cuda") if dispatch.unavailable_reason(b) is None
                 and device.type in (dispatch.backend_devices(b) or ()) and device.type == "cuda")


def cases(device: torch.device, full: bool, forced: tuple[str, ...] | None = None,
          quick: bool = False) -> list[Case]:
    """Every case, the compiled variants last.

    On a CPU, code compiled by inductor brings its own OpenMP thread pool, whose spinning
    threads then starve the eager ops' pool (eager ops measured up to 1000x slower after a
    torch.compile in the same process on 2 cores). Timing every compiled variant after all the
    others keeps that from skewing the eager and tiue rows.
    """
    forced = forced_backends(device) if forced is None else forced
    batches = (1, 8, 64) if full else (1, 8)
    attention_batches = (1, 8, 64) if full and device.type == "cuda" else ((1, 8) if full else (1,))
    attention_sizes = ATTENTION_SIZES
    if quick:  # benchmarks/gpu_check.sh: the sizes its targets and decisions need
        batches, attention_batches, attention_sizes = (1, 64), (1, 8), ATTENTION_SIZES[:1]
    found: list[Case] = []
    forced_variants = tuple(f"tiue:{b}" for b in forced)
    for variants in (("tiue", "eager") + forced_variants, ("compiled",)):
        def keep(op: str, v: str) -> bool:
            return v not in FORCED or op in OPS_BY_BACKEND[v.removeprefix("tiue:")]

        for batch in batches:
            found += [_ddim_case(batch, v) for v in variants if keep("ddim_combine", v)]
        for batch in batches:
            found += [_kl_case(batch, v, backward=False) for v in variants if keep("gaussian_kl", v)]
        for batch in batches:
            found += [_kl_case(batch, v, backward=True) for v in variants if keep("gaussian_kl fwd+bwd", v)]
        layouts = SDPA_LAYOUTS if "eager" in variants else ()
        for batch in attention_batches:
            for tokens, heads in attention_sizes:
                found += [_attention_case(batch, tokens, heads, v) for v in variants + layouts
                          if keep("shared_kv_attention", v)]
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


def device_seconds_per_call(call: Callable[[], object], device: torch.device,
                            calls: int = 20, replays: int = 10) -> tuple[float | None, str]:
    """Device time of one call on CUDA, and how it was taken (None on a CPU).

    `calls` back-to-back calls captured in one CUDA graph and replayed `replays` times between
    two CUDA events, as triton.testing.do_bench does: no host overhead is left in it. Where a
    call cannot be captured, CUDA events around calls * replays back-to-back launches (host
    gaps between launches may remain: the kind says which).
    """
    if device.type != "cuda":
        return None, ""
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    try:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                call()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                call()
        graph.replay()
        torch.cuda.synchronize(device)
        begin.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize(device)
        return begin.elapsed_time(end) * 1e-3 / (calls * replays), "graph replay"
    except Exception:  # noqa: BLE001  (not capturable: time the launches themselves)
        torch.cuda.synchronize(device)
        begin.record()
        for _ in range(calls * replays):
            call()
        end.record()
        torch.cuda.synchronize(device)
        return begin.elapsed_time(end) * 1e-3 / (calls * replays), "events over launches"


# Peak memory bandwidth by device name, GB/s (vendors' figures); unknown devices get none.
PEAK_BANDWIDTH_GB_S = (
    ("H200", 4800.0),
    ("H100 NVL", 3900.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM (HBM3)
    ("GH200", 4000.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100 80GB PCIe", 1935.0),
    ("A100", 1555.0),  # 40 GB
    ("L40S", 864.0),
    ("L4", 300.0),
    ("RTX 4090", 1008.0),
    ("A10G", 600.0),
)


def peak_bandwidth_gb_s(name: str) -> float | None:
    """The device's peak memory bandwidth from PEAK_BANDWIDTH_GB_S (first match), else None."""
    for key, value in PEAK_BANDWIDTH_GB_S:
        if key.lower() in name.lower():
            return value
    return None


def _dtype_for(device: torch.device, name: str | None) -> torch.dtype:
    names = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if name is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in names:
        raise ValueError(f"dtype: expected one of {', '.join(names)}, got {name!r}")
    return names[name]


def _row(case: Case, dtype: torch.dtype, per_call_seconds: list[float], moved: float, flops: float,
         device_seconds: float | None = None, peak_gb_s: float | None = None) -> dict:
    """median_us etc. are host time per call (wall clock, device synchronised per round);
    device_us is device_seconds_per_call's; GB/s and TFLOP/s use the device time when there is one."""
    row = {"op": case.op, "size": case.size, "variant": case.variant, "dtype": str(dtype).replace("torch.", "")}
    row.update(summarize(per_call_seconds))
    seconds = device_seconds if device_seconds else row["median_us"] * 1e-6
    row["device_us"] = device_seconds * 1e6 if device_seconds else None
    row["gb_per_s"] = moved / seconds / 1e9 if moved else None
    row["tflop_per_s"] = flops / seconds / 1e12 if flops else None
    row["pct_of_peak_bandwidth"] = 100 * row["gb_per_s"] / peak_gb_s if row["gb_per_s"] and peak_gb_s else None
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

    def test_host_overhead(request):
        """The host-overhead rows (printed and written beside the kernel table); never asserted."""
        directory = Path(request.config.getoption("--tiue-results-dir", default=None)
                         or Path(__file__).parent / "results")
        report_host_overhead(directory)

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
        device_seconds, _ = device_seconds_per_call(call, device)
        peak = peak_bandwidth_gb_s(kernel_report.device_name)
        kernel_report.add(_row(kernel_case, dtype, per_call, moved, flops, device_seconds, peak))


# -- host overhead: one call on tiny CPU tensors, where only overhead remains --------------------


def _tiny_host_cases() -> dict[str, tuple[Callable[[], object], Callable[[], object]]]:
    """op -> (tiue's call, the plain PyTorch expression it replaces), on tiny CPU tensors."""
    generator = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    noise, eps = randn(1, 4, 8, 8), randn(STEPS, 1, 4, 8, 8)
    x = randn(STEPS, 4, 8, 8)
    q = randn(STEPS, 1, 16, 2, 8).permute(0, 1, 3, 2, 4)  # as the attention processor lays it out
    k, v = randn(1, 2, 7, 8), randn(1, 2, 7, 8)
    return {
        "ddim_combine": (lambda: tiue.ops.ddim_combine(noise, eps, COEFFS, SCALE), lambda: _eager_ddim(noise, eps)),
        "gaussian_kl": (lambda: tiue.ops.gaussian_kl(x), lambda: _eager_kl(x)),
        "shared_kv_attention": (lambda: tiue.ops.shared_kv_attention(q, k, v), lambda: _eager_attention(q, k, v)),
    }


def host_overhead_rows(rounds: int = 15, calls: int = 200) -> list[dict]:
    """Per op: median microseconds per call of tiue's op and of the expression, timed in
    alternation (round by round, order swapped each round) on one thread; target: ratio <= 1."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows = []
        for op, (ours, plain) in _tiny_host_cases().items():
            samples: dict[str, list[float]] = {"tiue": [], "expression": []}
            for fn in (ours, plain):
                for _ in range(20):
                    fn()
            for i in range(rounds):
                order = (("tiue", ours), ("expression", plain))
                for name, fn in order if i % 2 == 0 else order[::-1]:
                    start = time.perf_counter()
                    for _ in range(calls):
                        fn()
                    samples[name].append((time.perf_counter() - start) / calls)
            ours_us = summarize(samples["tiue"])["median_us"]
            plain_us = summarize(samples["expression"])["median_us"]
            ratio = ours_us / plain_us
            rows.append(dict(op=op, tiue_us=ours_us, expression_us=plain_us, ratio=ratio,
                             backend=tiue.ops.last_backend(op), target="met" if ratio <= 1.0 else "not met"))
        return rows
    finally:
        torch.set_num_threads(threads)


def report_host_overhead(directory: Path, rounds: int = 15) -> list[dict]:
    """Measure the host-overhead rows, print their table and write host-overhead-<device>.{json,md}."""
    from _report import _write_atomically, git_revision, report_stem

    import json

    rows = host_overhead_rows(rounds=rounds)
    device = torch.device("cpu")
    lines = [
        f"### host overhead per call on {device_name_of(device)}",
        "",
        f"git {git_revision()}, torch {torch.__version__}, one thread, tiny fp32 CPU tensors (only overhead "
        "remains); `python benchmarks/test_kernels.py --host-overhead`. Target: no tiue op costs more per "
        "call than the plain PyTorch expression it replaces (ratio <= 1).",
        "",
        "| op | backend | tiue (us) | expression (us) | ratio | target |",
        "|---|---|---:|---:|---:|---|",
    ]
    lines += [f"| {r['op']} | {r['backend']} | {r['tiue_us']:.1f} | {r['expression_us']:.1f} | {r['ratio']:.2f} "
              f"| {r['target']} |" for r in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    stem = report_stem("host-overhead", device)
    _write_atomically(directory / f"{stem}.md", text)
    _write_atomically(directory / f"{stem}.json", json.dumps(rows, indent=2))
    return rows


def device_name_of(device: torch.device) -> str:
    from _report import device_name

    return device_name(device)


# -- plain runner (no pytest-benchmark needed) ------------------------------------------------


def run_plain(device: torch.device, full: bool, dtype: torch.dtype, directory: Path, quick: bool = False,
              rounds: int | None = None) -> Report:
    command = "python benchmarks/test_kernels.py " + " ".join(sys.argv[1:])
    report = Report(SUITE, device, command=command.strip())
    peak = peak_bandwidth_gb_s(report.device_name)
    for case in cases(device, full, quick=quick):
        try:
            call, moved, flops = case.build(device, dtype)
            timed = Timed(call, device)
            timed()  # one untimed round, as the pytest path does
            samples = []
            for _ in range(rounds or timed.rounds):
                start = time.perf_counter()
                timed()
                samples.append((time.perf_counter() - start) / timed.inner)
            device_seconds, _ = device_seconds_per_call(call, device)
        except Exception as error:  # noqa: BLE001  (one case's failure must not hide the others)
            print(f"{case.id}: FAILED {type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}",
                  flush=True)
            report.failures.append(case.id)
            continue
        report.add(_row(case, dtype, samples, moved, flops, device_seconds, peak))
        device_note = f", device {report.rows[-1]['device_us']:.1f} us" if device_seconds else ""
        print(f"{case.id}: {report.rows[-1]['median_us']:.1f} us host{device_note}", flush=True)
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
    parser.add_argument("--quick", action="store_true",
                        help="the sizes benchmarks/gpu_check.sh needs (ddim_combine at B=1 and 64, attention at N=4096)")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, one round: checks the code path")
    parser.add_argument("--host-overhead", action="store_true",
                        help="only the host-overhead rows: one call of each op on tiny CPU tensors vs its expression")
    args = parser.parse_args(argv)
    if args.host_overhead:
        report_host_overhead(Path(args.results_dir), rounds=3 if args.dry_run else 15)
        return
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    full = args.full or device.type == "cuda"
    if args.dry_run:
        from e2e.suite import COMPILE_BACKEND_VAR, use_compile_backend

        use_compile_backend(os.environ.get(COMPILE_BACKEND_VAR))  # dynamo only: no inductor compiles on a CPU
        global STEPS, LATENT, ATTENTION_SIZES, HEAD_DIM, TEXT_TOKENS, TARGET_SECONDS_PER_CASE
        LATENT, ATTENTION_SIZES, HEAD_DIM, TEXT_TOKENS = (4, 8, 8), ((64, 2),), 16, 7
        TARGET_SECONDS_PER_CASE = {"cpu": 0.01, "cuda": 0.01}
    report = run_plain(device, full and not args.dry_run, _dtype_for(device, args.dtype), Path(args.results_dir),
                       quick=args.quick or args.dry_run, rounds=2 if args.dry_run else None)
    if report.failures:
        print(f"failed cases: {', '.join(report.failures)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
