"""One `tiue serve` subprocess with the embedded model for the whole session, on a free loopback port.

Its flags make merging deterministic: a pass fires when MAX_BATCH images wait, or WAIT_MS after
the oldest arrived, so requests sent together for MAX_BATCH images in all share one pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

MAX_BATCH = 4
WAIT_MS = 1000


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    pytest.importorskip("gradio", reason="tiue serve needs the serve extra: pip install -e '.[serve]'")
    from tiue.testing.serve_process import ServeProcess

    # As many threads as this process (tests/conftest.py sets them), so that a pass is the same
    # computation as a `tiue sample` batch of its size here.
    with ServeProcess(tmp_path_factory.mktemp("serve"), "--max-batch-size", str(MAX_BATCH), "--max-wait-ms",
                      str(WAIT_MS), threads=torch.get_num_threads()) as running:
        yield running


@pytest.fixture(scope="session")
def sample_reference(tmp_path_factory):
    """`tiue sample`'s PNGs for (prompts, seed): the CLI run in this process (the model loads
    once); cached per call."""
    from tiue.cli import main

    cache: dict = {}
    root = tmp_path_factory.mktemp("reference")

    def reference(prompts: list[str], seed: int) -> list[Path]:
        key = (tuple(prompts), seed)
        if key not in cache:
            out = root / f"run{len(cache)}"
            arguments = ["sample", "--seed", str(seed), "--out", str(out)]
            for prompt in prompts:
                arguments += ["--prompt", prompt]
            assert main(arguments) == 0
            cache[key] = [out / f"{i:05d}-seed{seed + i}.png" for i in range(len(prompts))]
        return cache[key]

    return reference
