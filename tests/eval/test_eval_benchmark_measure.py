"""benchmarks/test_eval_memory.py reports each child's own peak memory, not its parent's."""

import importlib.util
import json
from pathlib import Path

import numpy as np

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "test_eval_memory.py"


def _benchmark_module():
    spec = importlib.util.spec_from_file_location("eval_memory_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_child_reports_its_own_peak_not_its_parents():
    benchmark = _benchmark_module()
    held = np.ones(400 * 2**20 // 8)  # 400 MB resident in this (the parent) process while the child runs
    report = ("import json, resource, sys; json.dump({'peak': peak_rss_mb(), "
              "'ru_maxrss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, sys.stdout)")
    child = benchmark.run_child(report, [])
    assert held.sum() > 0
    # The child, a bare interpreter, holds a few tens of MB. (getrusage's ru_maxrss, which the
    # benchmark read before, says 400+ here on Linux: the parent's peak carried across exec.)
    assert child["peak"] < 150, json.dumps(child)
