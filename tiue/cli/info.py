"""Show what tiue runs with: versions, the kernel backends (and why any is unavailable) and the
backend each op uses on CPU and CUDA tensors. Imports torch, never diffusers or triton.

    tiue info
    tiue info --build     # compile tiue._C now when this install lacks it (else the first op does)
"""

from __future__ import annotations

import argparse
import os
import platform
from importlib.metadata import PackageNotFoundError, version

__all__ = ["add_arguments", "run", "report"]

DISTRIBUTIONS = ("torch", "diffusers", "transformers", "accelerate", "peft", "triton")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--build",
        action="store_true",
        help="if neither the install nor the cache has tiue._C, compile it now (about a minute) "
        "instead of reporting it as not built yet",
    )


def run(args: argparse.Namespace) -> None:
    print(report(build=args.build))


def _version(distribution: str) -> str:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "not installed"


def report(build: bool = False) -> str:
    import torch

    import tiue
    import tiue.ops
    from tiue.ops import native

    native.load_error(build=build)  # first call: decides whether this process builds tiue._C
    info = tiue.ops.backend_info()
    cuda = (
        f"CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s)"
        if torch.version.cuda
        else "built without CUDA"
    )
    lines = [f"tiue {tiue.__version__} ({os.path.dirname(tiue.__file__)})"]
    lines.append(f"python {platform.python_version()}")
    for name in DISTRIBUTIONS:
        lines.append(f"{name} {_version(name)}" + (f" ({cuda})" if name == "torch" else ""))
    forced = info["forced"] or "unset (automatic choice)"
    lines += ["", f"backends (TIUE_KERNELS: {forced}):"]
    width = max(map(len, info["backends"]))
    for backend, state in info["backends"].items():
        lines.append(f"  {backend:<{width}}  {state}")
        if backend == "cpp" and native.location():
            lines.append(f"  {'':<{width}}  tiue._C from {native.location()}")
    lines += ["", "ops (backend on cpu / cuda tensors):"]
    width = max(map(len, info["ops"]))
    for op, devices in info["ops"].items():
        lines.append(f"  {op:<{width}}  cpu: {devices['cpu']}; cuda: {devices['cuda']}")
    return "\n".join(lines)
