"""The evaluation itself on CPU: images per second and peak RSS of `evaluate` on the shapes
world, this code against a baseline revision of tiue/eval (default: 3c3c03d, the code before
streaming); and the peak memory of PRDC on Inception-sized features (default 30K x 2048).
Not part of the test suite; slow.

    python -m pytest benchmarks/test_eval_memory.py -q -s -k eval_memory_and_speed
    TIUE_EVAL_BENCH_N=512 TIUE_EVAL_BENCH_BASELINE=3c3c03d python -m pytest benchmarks/test_eval_memory.py -q -s -k eval_memory_and_speed
    TIUE_PRDC_BENCH_N=30000 python -m pytest benchmarks/test_eval_memory.py -q -s -k prdc_memory

Each run is a fresh subprocess with one thread, and reports its own peak: VmHWM from
/proc/self/status (Linux), the high-water mark of the process's own memory since its exec.
(getrusage's ru_maxrss would not do: Linux carries the parent's peak into a child across
fork/vfork and exec, so a child of a large pytest process reported at least the parent's peak.)
The baseline runs from a copy of the current tiue package whose tiue/eval is replaced by the
baseline revision's (git show), so only the evaluation code differs. Both runs must give the
same metrics (same images, same shapes feature network). Speed and memory are reported,
never asserted. Settings: TIUE_EVAL_BENCH_N (2000), _BATCH (64), _STEPS (4), _MODEL (shapes),
_BASELINE (a git revision), _RESULTS_DIR (benchmarks/results); TIUE_PRDC_BENCH_N (30000),
TIUE_PRDC_BENCH_DIM (2048).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METRICS = ("fid", "precision", "recall", "f1", "density", "coverage", "accuracy")

# Prepended to every child: its own peak resident memory, in MB.
PEAK_RSS = '''
def peak_rss_mb():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")
'''

_EVAL_CHILD = r"""
import json, sys, time
from tiue.eval.runner import EvalSpec, evaluate
n, batch, steps, model = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
start = time.perf_counter()
result = evaluate(EvalSpec(model=model, steps=steps, mode="loopfree", guidance_scale=None, timestep_spacing=None,
                           num_images=n, seed=0, batch_size=batch, progress=False))
seconds = time.perf_counter() - start
json.dump({"seconds": seconds, "images_per_second": n / seconds, "peak_rss_mb": peak_rss_mb(),
           "metrics": {k: result[k] for k in METRICS}}, sys.stdout)
""".replace("METRICS", repr(METRICS))

_PRDC_CHILD = r"""
import json, sys, time
import numpy as np
from tiue.eval.knn_metrics import prdc
n, dim = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
real = rng.standard_normal((n, dim), dtype=np.float32)
generated = rng.standard_normal((n, dim), dtype=np.float32) * np.float32(1.1)
before = peak_rss_mb()
start = time.perf_counter()
result = prdc(real, generated, k=5)
json.dump({"seconds": time.perf_counter() - start, "peak_rss_mb": peak_rss_mb(), "rss_with_inputs_mb": before,
           "result": result}, sys.stdout)
"""


def run_child(code: str, args: list, pythonpath: Path = REPO) -> dict:
    """Run `code` (with peak_rss_mb() defined) in a fresh one-thread Python; its last stdout line as JSON."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               PYTHONPATH=str(pythonpath), HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, "-c", PEAK_RSS + code, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=pythonpath, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


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


def _machine() -> str:
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, 1 thread per run"


def _results_dir() -> Path:
    results = Path(os.environ.get("TIUE_EVAL_BENCH_RESULTS_DIR", REPO / "benchmarks" / "results"))
    results.mkdir(parents=True, exist_ok=True)
    return results


def test_eval_memory_and_speed(tmp_path):
    n = int(os.environ.get("TIUE_EVAL_BENCH_N", "2000"))
    batch = int(os.environ.get("TIUE_EVAL_BENCH_BATCH", "64"))
    steps = int(os.environ.get("TIUE_EVAL_BENCH_STEPS", "4"))
    model = os.environ.get("TIUE_EVAL_BENCH_MODEL", "shapes")
    baseline = os.environ.get("TIUE_EVAL_BENCH_BASELINE", "3c3c03d")
    args = [n, batch, steps, model]
    # The baseline's evaluate has no `progress` argument.
    baseline_child = _EVAL_CHILD.replace(", progress=False", "")
    rows = {"streaming (this code)": run_child(_EVAL_CHILD, args),
            f"baseline ({baseline})": run_child(baseline_child, args, _baseline_tree(baseline, tmp_path))}
    lines = [f"Evaluation of `{model}` ({steps} steps), N = {n}, batch {batch}, CPU ({_machine()})", "",
             "| code | images/s | seconds | peak RSS of the run (MB) |", "|---|---:|---:|---:|"]
    for label, row in rows.items():
        lines.append(f"| {label} | {row['images_per_second']:.1f} | {row['seconds']:.1f} | {row['peak_rss_mb']:.0f} |")
    report = "\n".join(lines)
    print("\n" + report)
    results = _results_dir()
    (results / f"eval-memory-n{n}.md").write_text(report + "\n")
    (results / f"eval-memory-n{n}.json").write_text(json.dumps(rows, indent=2) + "\n")
    first, second = rows.values()
    for key in METRICS:  # same images, same network: same numbers
        assert first["metrics"][key] == second["metrics"][key], key


def test_prdc_memory():
    n = int(os.environ.get("TIUE_PRDC_BENCH_N", "30000"))
    dim = int(os.environ.get("TIUE_PRDC_BENCH_DIM", "2048"))
    row = run_child(_PRDC_CHILD, [n, dim])
    report = "\n".join([
        f"PRDC (k = 5, blocks of 512 rows, float64) on two {n} x {dim} float32 feature sets, CPU ({_machine()})", "",
        "| peak RSS with the inputs only (MB) | peak RSS of the run (MB) | added by PRDC (MB) | seconds |",
        "|---:|---:|---:|---:|",
        f"| {row['rss_with_inputs_mb']:.0f} | {row['peak_rss_mb']:.0f} | {row['peak_rss_mb'] - row['rss_with_inputs_mb']:.0f} "
        f"| {row['seconds']:.0f} |"])
    print("\n" + report)
    results = _results_dir()
    (results / f"prdc-memory-n{n}-d{dim}.md").write_text(report + "\n")
    (results / f"prdc-memory-n{n}-d{dim}.json").write_text(json.dumps(row, indent=2) + "\n")
