"""Command-line options shared by the benchmark suites (`pytest benchmarks/ --help`, "tiue").

Every option defaults to None here; each suite applies its own per-device default, so a CPU
run stays short and a GPU run measures SD-scale sizes.
"""

from __future__ import annotations

# (option, help) pairs; all take a value unless listed in _FLAGS.
_OPTIONS = (
    ("--tiue-device", "cpu or cuda (default: cuda when available)"),
    ("--tiue-dtype", "fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)"),
    ("--tiue-results-dir", "directory for JSON/CSV/Markdown reports (default: benchmarks/results)"),
    # end-to-end suite (benchmarks/test_end_to_end.py)
    ("--tiue-scale", "model scale: small, sd21, small-xl or sdxl (default: small); small and "
     "small-xl are CPU-sized SD- and SDXL-shaped models, sd21 and sdxl the SD2.1-base and SDXL-base "
     "architectures (GPU)"),
    ("--tiue-rows", "comma-separated end-to-end rows to run (default: all, per device)"),
    ("--tiue-extra-results-dir", "a second directory that also receives the reports"),
    ("--tiue-image-size", "image side in pixels (default: per scale)"),
    ("--tiue-batch-sizes", "comma-separated batch sizes"),
    ("--tiue-teacher-batch-sizes", "comma-separated batch sizes of the multi-step teacher rows"),
    ("--tiue-rounds", "timed rounds per row"),
    ("--tiue-teacher-rounds", "timed rounds of the multi-step teacher rows"),
    ("--tiue-warmup", "untimed warm-up calls per row"),
    ("--tiue-row-timeout", "seconds after which a row is skipped (0: no limit)"),
)
_FLAGS = (
    # kernel suite (benchmarks/test_kernels.py)
    ("--tiue-kernels-full", "kernel suite: SD-scale sizes on the CPU too (the default on CUDA)"),
)


def pytest_addoption(parser):
    group = parser.getgroup("tiue", "tiue benchmarks")
    for name, help_text in _OPTIONS:
        group.addoption(name, default=None, help=help_text)
    for name, help_text in _FLAGS:
        group.addoption(name, action="store_true", default=False, help=help_text)
    _add_end_to_end_options(group)


# --- end-to-end suite only (benchmarks/test_end_to_end.py; defaults in benchmarks/e2e/config.py)

_END_TO_END_OPTIONS = (
    ("--tiue-compiled-batch-sizes", "end-to-end: batch sizes of the compiled rows f, f-unet, "
     "c-unet-compiled (default: 1 on CPU, where each costs minutes of compile; else --tiue-batch-sizes)"),
    ("--tiue-threads", "end-to-end: torch CPU threads (default: 1 on CPU, steady on shared cores; "
     "torch's own on CUDA)"),
    ("--tiue-fast-backend", "end-to-end: enable_fast_path's backend for rows f, f-unet: inductor or "
     "openvino (default: the pipeline's choice, openvino for fp32 on a CPU when installed)"),
)


def _add_end_to_end_options(group) -> None:
    for name, help_text in _END_TO_END_OPTIONS:
        group.addoption(name, default=None, help=help_text)


# --- end of the end-to-end block
