"""Per-call cost of noticing moved weights, at SD2.1-base size (UNet and VAE, random weights).

The fast path asks before each call with CUDA graphs whether the UNet's or VAE's weights moved to
new storage. Until tiue.fast.weight_watch it walked both models for every tensor's address and
strides on every call (`walk` below, the expression it used); the watch compares the addresses
of a list made once (`watch`), and makes the list again only
after a registration on a watched module. Prints the median and quartiles of each, in
microseconds per call, with the torch version: no speed is asserted.

    python tools/weight_watch_cost.py [--calls 300] [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402

from benchmarks.e2e.models import SD21_UNET_CONFIG, SD21_VAE_CONFIG  # noqa: E402
from tiue.fast import weight_watch  # noqa: E402


def walk(models) -> tuple:
    return tuple((t.data_ptr(), t.stride()) for model in models for t in (*model.parameters(), *model.buffers()))


def time_us(fn, calls: int) -> list[float]:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return times


def summary(times: list[float]) -> str:
    q1, median, q3 = statistics.quantiles(times, n=4)
    return f"median {median:8.1f} us  (quartiles {q1:.1f}-{q3:.1f})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--device", default="cpu", help="where the weights live (default: %(default)s)")
    args = parser.parse_args(argv)
    # Built on the meta device and given uninitialised storage: the cost does not depend on values.
    with torch.device("meta"):
        models = (UNet2DConditionModel(**SD21_UNET_CONFIG), AutoencoderKL(**SD21_VAE_CONFIG))
    models = tuple(model.to_empty(device=args.device) for model in models)
    tensors = sum(len([*m.parameters(), *m.buffers()]) for m in models)
    watch = weight_watch.WeightWatch(models)
    assert watch.moved() is False
    print(f"torch {torch.__version__}, SD2.1-base UNet + VAE on {args.device}: {tensors} tensors, {args.calls} calls each")
    print(f"walk (per call until the watch)        {summary(time_us(lambda: walk(models), args.calls))}")
    print(f"{'watch (address check of the list)':<39}{summary(time_us(watch.moved, args.calls))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
