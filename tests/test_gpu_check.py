"""benchmarks/gpu_check.sh: its dry run on a CPU, and the pieces of it that fixed misleading
GPU numbers (forced kernel rows, per-row peak memory, the device-time report).

The dry run runs every step of the GPU script with the same code at tiny sizes: the installs'
check, the environment, the Triton kernels in the interpreter and the C++ kernels against
float64, the forced-kernel agreement checks, the kernel table and the host-overhead rows, the
end-to-end rows b, c, c-compiled, d, e, f and their UNet rows (small SD scale, batch 1)
and f at the small SDXL scale, the training step against the paper-style step, the attention
backward checks and table, the fast-path checks, and the targets report. What it does not
exercise: the build of the CUDA extension (a CUDA toolchain) and inductor's code generation:
`torch.compile` traces with dynamo (fullgraph as on the GPU) and runs the graph eagerly
(TIUE_E2E_COMPILE_BACKEND=eager), so its compiled rows are not compiled timings.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _benchmark_module(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"gpu_check_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_dry_run_runs_every_step(tmp_path):
    results = tmp_path / "results"
    env = dict(os.environ, TIUE_GPU_CHECK_RESULTS=str(results), TIUE_GPU_CHECK_BUDGET="1500",
               PYTHON=sys.executable)
    env.pop("OUT", None)
    run = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=1800)
    steps = list(csv.DictReader((results / "steps.tsv").open(), delimiter="\t"))
    names = [s["step"] for s in steps]
    assert names == ["install", "env", "e2e-sd21", "correctness-triton", "build", "correctness-cuda", "kernels",
                     "kernel-table", "host-overhead", "train-step", "fast-path", "e2e-sdxl", "attention-backward",
                     "attention-backward-table", "targets"], run.stdout[-3000:]
    failed = {s["step"]: s["status"] for s in steps if s["status"] != "ok"}
    assert not failed, {name: (results / f"{name}.log").read_text()[-2000:] for name in failed}
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for pattern in ("env.json", "kernels.json", "kernels-*.json", "host-overhead-*.json", "*-small.json",
                    "*-small-xl.json", "train-step-*.json", "attention_backward.json", "attention-backward-*.md",
                    "fast_path.json", "targets.md", "summary.md"):
        assert list(results.glob(pattern)), pattern
    # The end-to-end rows ran, the compiled ones included; the targets were all reported.
    rows = json.loads(next(results.glob("*-small.json")).read_text())["rows"]
    assert {(r["row"], r["status"]) for r in rows if r["batch"] == 1} >= {
        (row, "ok") for row in ("b", "c", "c-compiled", "d", "e", "f", "f-unet", "c-unet-compiled")}
    targets = (results / "targets.md").read_text()
    for target in ("f <= 0.5x of c", "f <= 0.25x of d", "f-unet / c-unet-compiled", "peak memory <= 1.15x",
                   "50% of peak bandwidth", "1.5x the paper-style step"):
        assert target in targets


def test_kernel_table_forces_the_kernels_cuda_does_not_choose():
    # gpu_kernels.sh measured only what CUDA runs by default: plain PyTorch for gaussian_kl and
    # attention, so their Triton (and CUDA) kernels never appeared in a GPU table.
    kernels = _benchmark_module("test_kernels")
    found = kernels.cases(torch.device("cuda"), full=True, forced=("triton", "cuda"))
    variants = {(c.op, c.variant) for c in found}
    for op in ("ddim_combine", "gaussian_kl", "gaussian_kl fwd+bwd", "shared_kv_attention"):
        assert (op, "tiue:triton") in variants, op
    for op in ("ddim_combine", "gaussian_kl", "gaussian_kl fwd+bwd"):
        assert (op, "tiue:cuda") in variants, op
    assert ("shared_kv_attention", "tiue:cuda") not in variants  # no CUDA attention kernel exists


def test_forced_variant_runs_the_forced_backend(monkeypatch):
    kernels = _benchmark_module("test_kernels")
    monkeypatch.delenv("TIUE_KERNELS", raising=False)
    case = next(c for c in kernels.cases(torch.device("cpu"), full=False, forced=())
                if c.op == "ddim_combine" and c.variant == "tiue")
    call, moved, _ = case.build(torch.device("cpu"), torch.float32)
    forced = kernels._forced("torch", lambda: call())
    forced()
    import tiue.ops

    assert tiue.ops.last_backend("ddim_combine") == "torch"
    assert "TIUE_KERNELS" not in os.environ  # restored after the call


def test_peak_bandwidth_by_device_name():
    kernels = _benchmark_module("test_kernels")
    assert kernels.peak_bandwidth_gb_s("NVIDIA H200") == 4800
    assert kernels.peak_bandwidth_gb_s("NVIDIA H100 80GB HBM3") == 3350
    assert kernels.peak_bandwidth_gb_s("NVIDIA H100 PCIe") == 2000
    assert kernels.peak_bandwidth_gb_s("AMD EPYC 7R13 (2 threads)") is None


def test_row_memory_counts_its_own_models_not_every_model_loaded(tmp_path):
    # On CUDA the end-to-end rows reported the device's reserved peak, so every row counted the
    # model copies of all the rows before it (c was charged for e's and f's copies, and so on).
    pytest.importorskip("diffusers")
    sys.path.insert(0, str(BENCHMARKS))
    from e2e.measure import resident_bytes
    from e2e.models import build_models
    from e2e.rows import RowFactory

    models = build_models("small", torch.device("cpu"), torch.float32)
    factory = RowFactory(models, image_size=32)
    stock, tiue_eager = factory.prepare("c", 1), factory.prepare("e", 1)
    one_copy = resident_bytes(models.modules())
    assert resident_bytes(stock.modules) == one_copy
    assert resident_bytes(tiue_eager.modules) == one_copy  # its own copy, counted once
    assert not {id(p) for m in stock.modules for p in m.parameters()} & {
        id(p) for m in tiue_eager.modules for p in m.parameters()}
