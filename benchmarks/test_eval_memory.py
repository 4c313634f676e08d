"""The evaluation itself on CPU: images per second and peak RSS of `evaluate` on the shapes
world, this code against a baseline revision of tiue/eval (default: 3c3c03d, the code before
streaming). Not part of the test suite; slow (two runs of N images each).

    python -m pytest benchmarks/test_eval_memory.py -q -s
    TIUE_EVAL_BENCH_N=2000 TIUE_EVAL_BENCH_BASELINE=3c3c03d python -m pytest benchmarks/test_eval_memory.py -q -s

Each run is a fresh subprocess (so ru_maxrss is that run's own peak), with one thread. The
baseline runs from a copy of the current tiue package whose tiue/eval is replaced by the
baseline revision's (git show), so only the evaluation code differs. Both runs must give the
same metrics (same images, same shapes feature network). Speed and memory are reported,
never asserted. Settings: TIUE_EVAL_BENCH_N (2000), _BATCH (64), _STEPS (4), _MODEL (shapes),
_BASELINE (a git revision), _RESULTS_DIR (benchmarks/results).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("fid", "precision", "recall", "f1", "density", "coverage", "accuracy")

_CHILD = r"""
import json, resource, sys, time
from tiue.eval.runner import EvalSpec, evaluate
n, batch, steps, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
result = evaluate(EvalSpec(model=model, steps=steps, mode="loopfree", guidance_scale=None, timestep_spacing=None,
                           num_images=n, seed=0, batch_size=batch))
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "images_per_second": n / seconds,
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "metrics": {k: result[k] for k in METRICS}}, sys.stdout)
""".replace("METRICS", repr(METRICS))


def _baseline_tree(revision: str, root: Path) -> Path:
    """A copy of tiue with tiue/eval as of `revision`."""
    tree = root / "baseline"
    shutil.copytree(REPO / "tiue", tree / "tiue", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.rmtree(tree / "tiue" / "eval")
    (tree / "tiue" / "eval").mkdir()
    names = subprocess.run(["git", "ls-tree", "--name-only", revision, "tiue/eval/"], capture_output=True, text=True,
                           check=True, cwd=REPO).stdout.split()
    for name in names:
        text = subprocess.run(["git", "show", f"{revision}:{name}"], capture_output=True, text=True, check=True, cwd=REPO).stdout
        (tree / name).write_text(text)
    return tree


def _run(pythonpath: Path, n: int, batch: int, steps: int, model: str) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(pythonpath), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", _CHILD, str(n), str(batch), str(steps), model], capture_output=True,
                          text=True, env=env, cwd=pythonpath, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_eval_memory_and_speed(tmp_path):
    n = int(os.environ.get("TIUE_EVAL_BENCH_N", "2000"))
    batch = int(os.environ.get("TIUE_EVAL_BENCH_BATCH", "64"))
    steps = int(os.environ.get("TIUE_EVAL_BENCH_STEPS", "4"))
    model = os.environ.get("TIUE_EVAL_BENCH_MODEL", "shapes")
    baseline = os.environ.get("TIUE_EVAL_BENCH_BASELINE", "3c3c03d")
    rows = {"streaming (this code)": _run(REPO, n, batch, steps, model),
            f"baseline ({baseline})": _run(_baseline_tree(baseline, tmp_path), n, batch, steps, model)}
    lines = [f"Evaluation of `{model}` ({steps} steps), N = {n}, batch {batch}, 1 thread, CPU", "",
             "| code | images/s | seconds | peak RSS (MB) |", "|---|---:|---:|---:|"]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['images_per_second']:.1f} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} |")
    report = "\n".join(lines)
    print("\n" + report)
    results = Path(os.environ.get("TIUE_EVAL_BENCH_RESULTS_DIR", REPO / "benchmarks" / "results"))
    results.mkdir(parents=True, exist_ok=True)
    (results / f"eval-memory-n{n}.md").write_text(report + "\n")
    (results / f"eval-memory-n{n}.json").write_text(json.dumps(rows, indent=2) + "\n")
    first, second = rows.values()
    for key in METRICS:  # same images, same network: same numbers
        assert first["metrics"][key] == second["metrics"][key], key
