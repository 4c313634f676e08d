"""Trace the fast path's one pass under the oldest torch tiue supports (TORCH_FLOOR).

torch's dynamo traces more Python with each release, so a pass that traces under the torch the
tests use can fail under an older one (as it did on a GPU machine with torch 2.11). This script
keeps a virtual environment with the floor's torch from PyPI and runs `tiue.testing.trace_check`
there: the SD and SDXL passes, unguided and guided, compiled with fullgraph=True and dynamo's
eager backend (no inductor, no GPU needed).

The environment sees this Python's other packages (--system-site-packages) and adds only torch
and what its wheel requires. PyPI's Linux torch wheels are CUDA builds: the first run downloads
about 3 GB (torch 2.11.0 with its CUDA libraries and Triton 3.6; 71 s here) and takes 4.6 GB of
disk; later runs reuse the environment. It lives in $TIUE_CACHE/torch-floor/ (see tiue.cache)
unless --venv says otherwise, and is built under a temporary name, so an interrupted install
never leaves one that looks complete.

    python tools/torch_floor_check.py            # create the environment if needed, then trace
    python tools/torch_floor_check.py --no-install   # exit 2 if the environment is missing

Exit status: 0 when every case traces, 1 when one fails, 2 when the environment is missing or
cannot be built. tests/test_torch_floor.py runs the trace here whenever the environment exists.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tiue.cache import cache_root  # noqa: E402
from tiue.files import atomic_directory  # noqa: E402

# The oldest torch the README and pyproject name, and the only one this script checks: the
# torch of the GPU images the project measures on.
TORCH_FLOOR = "2.11.0"


def default_venv(torch_version: str = TORCH_FLOOR) -> Path:
    return cache_root() / "torch-floor" / f"torch-{torch_version}"


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_torch(venv: Path) -> str | None:
    """The torch version the environment imports, None if it has none that imports."""
    python = venv_python(venv)
    if not python.exists():
        return None
    result = subprocess.run(
        [str(python), "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True, cwd="/",
    )
    return result.stdout.strip().split("+")[0] if result.returncode == 0 else None


def create_venv(venv: Path, torch_version: str) -> None:
    print(f"creating {venv} with torch {torch_version} (about 3 GB from PyPI on the first run)", flush=True)
    with atomic_directory(venv) as scratch:
        subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(scratch)], check=True)
        subprocess.run(
            [str(venv_python(scratch)), "-m", "pip", "install", "--quiet", f"torch=={torch_version}"], check=True
        )


def run_trace(venv: Path) -> int:
    # The extension tiue._C is not needed to trace (dynamo treats tiue's ops as opaque calls):
    # building it for this torch would only cost a minute.
    env = dict(os.environ, TIUE_NO_JIT_BUILD="1")
    env.pop("PYTHONPATH", None)
    # `-m` from the checkout's root imports this checkout's tiue, ahead of any installed one.
    return subprocess.run([str(venv_python(venv)), "-m", "tiue.testing.trace_check"], cwd=ROOT, env=env).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--venv", type=Path, default=None, help="the environment (default: %(default)s -> "
                        "$TIUE_CACHE/torch-floor/torch-<version>)")
    parser.add_argument("--torch", default=TORCH_FLOOR, help="torch version to check (default: %(default)s)")
    parser.add_argument("--no-install", action="store_true", help="never create the environment")
    args = parser.parse_args(argv)
    venv = args.venv or default_venv(args.torch)
    found = installed_torch(venv)
    if found != args.torch:
        if args.no_install:
            print(f"--no-install: {venv} has torch {found}, not {args.torch}; run without --no-install to create it")
            return 2
        try:
            create_venv(venv, args.torch)
        except (subprocess.CalledProcessError, OSError) as error:
            print(f"could not create {venv}: {error}")
            return 2
        found = installed_torch(venv)
        if found != args.torch:
            print(f"{venv}: torch {args.torch} was installed but the environment imports torch {found}")
            return 2
    return 1 if run_trace(venv) else 0


if __name__ == "__main__":
    sys.exit(main())
