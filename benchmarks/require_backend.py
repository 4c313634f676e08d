"""Fail loudly unless tiue's kernels will run on the backends a GPU script means to measure.

    python benchmarks/require_backend.py triton [cuda ...]

Prints `tiue.ops.backend_info()` and exits with status 1, naming the reason, when a named backend
is unavailable, or when an op whose automatic choice on CUDA is the first named backend would not
run on it: a GPU script must never silently measure plain PyTorch. (Ops that default to plain
PyTorch on CUDA because the kernels measured slower are measured by forcing TIUE_KERNELS.)
"""

from __future__ import annotations

import json
import sys


def problems(wanted: list[str], info: dict) -> list[str]:
    """What stands between `info` (a backend_info() dict) and running on the `wanted` backends."""
    found = []
    for backend in wanted:
        status = info["backends"].get(backend)
        if status is None:
            found.append(f"{backend}: not a tiue backend (expected one of {', '.join(info['backends'])})")
        elif not status.startswith("available"):
            found.append(f"{backend}: {status}")
    if not found and wanted:
        for op, devices in info["ops"].items():
            first_choice = info["auto_order"][op]["cuda"][:1]
            if first_choice == [wanted[0]] and devices["cuda"] != wanted[0]:
                found.append(f"{op} on CUDA tensors runs on {devices['cuda']!r}, not {wanted[0]!r}")
    return found


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    import tiue.ops

    info = tiue.ops.backend_info()
    print(json.dumps(info, indent=1))
    found = problems(argv, info)
    for problem in found:
        print(f"require_backend: {problem}", file=sys.stderr)
    if found:
        print("require_backend: refusing to measure: the numbers would not be the kernels'", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
