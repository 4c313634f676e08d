"""The torch floor: the README and pyproject name the oldest torch that tools/torch_floor_check.py
traces the fast path's one pass under (SD and SDXL, unguided and guided, fullgraph, dynamo's eager
backend), and the trace holds.

Under the floor's torch when its environment exists (`python tools/torch_floor_check.py` makes it:
about 3 GB from PyPI), else the same cases under the installed torch. Exactly one of the two trace
tests runs; the other says why it is skipped.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tiue.testing.trace_check import CASES, trace_case

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "torch_floor_check.py"

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason="needs a source checkout (tools/)")


def _tool():
    spec = importlib.util.spec_from_file_location("torch_floor_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def floor():
    tool = _tool()
    venv = tool.default_venv()
    return tool, venv, tool.installed_torch(venv) == tool.TORCH_FLOOR


def test_readme_and_pyproject_name_the_checked_floor(floor):
    tool = floor[0]
    major_minor = ".".join(tool.TORCH_FLOOR.split(".")[:2])
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.findall(r'"torch>=([0-9.]+)"', pyproject) == [major_minor]
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"torch >= ?([0-9]+\.[0-9]+)", readme))
    assert named == {major_minor}, f"the README names torch >= {sorted(named)}; the checked floor is {major_minor}"


def test_one_pass_traces_under_the_torch_floor(floor):
    tool, venv, ready = floor
    if not ready:
        pytest.skip(f"no torch {tool.TORCH_FLOOR} environment at {venv}: `python tools/torch_floor_check.py` makes it")
    result = subprocess.run(
        [sys.executable, str(TOOL), "--no-install"], capture_output=True, text=True, timeout=1800
    )
    assert result.returncode == 0, result.stdout + result.stderr[-6000:]
    assert f"{len(CASES)} traced, 0 failed" in result.stdout


def test_one_pass_traces_under_the_installed_torch(floor, tmp_path):
    tool, venv, ready = floor
    if ready:
        pytest.skip(f"the torch {tool.TORCH_FLOOR} environment exists: the floor test traces these cases there")
    failures = []
    for case in CASES:
        try:
            trace_case(case, tmp_path / case.model)
        except Exception as error:  # noqa: BLE001 - every case runs; all failures are reported
            failures.append(f"{case.name}: {type(error).__name__}: {error}")
    assert not failures, "\n\n".join(failures)
