"""End-to-end latency: stock Stable Diffusion (or SDXL) pipelines, the paper's way, tiue eager
and tiue's fast path, on the same random-weight models (issue 4).

    python -m pytest benchmarks/test_end_to_end.py -q -s                        # CPU, small scale
    python -m pytest benchmarks/test_end_to_end.py -q -s --tiue-scale small-xl  # CPU, SDXL-shaped
    python -m pytest benchmarks/test_end_to_end.py --tiue-scale sd21 ...        # GPU; or sdxl; see --help, "tiue"

Each (row, batch size) is one test. Results go to benchmarks/results/<device>-<scale>.json,
.csv, .md and .png, rewritten after every row; the Markdown table, with the issue's targets,
is printed at the end of the session. Nothing here asserts a speed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the e2e package beside this file

from e2e.config import SuiteConfig  # noqa: E402
from e2e.suite import EndToEndSuite, RowSkipped  # noqa: E402


def pytest_generate_tests(metafunc):
    if "case" in metafunc.fixturenames:
        cases = SuiteConfig.from_pytest(metafunc.config).cases()
        metafunc.parametrize("case", cases, ids=[f"{row}-b{batch}" for row, batch in cases])


class _SummaryPrinter:
    """Prints the session's Markdown table after pytest's own summary."""

    def __init__(self):
        self.suite: EndToEndSuite | None = None

    def pytest_terminal_summary(self, terminalreporter):
        if self.suite is None or not self.suite.results.rows:
            return
        terminalreporter.write_sep("=", "tiue end-to-end benchmark")
        terminalreporter.write(self.suite.markdown())
        for path in self.suite.written:
            terminalreporter.write_line(f"wrote {path}")


@pytest.fixture(scope="session")
def end_to_end_suite(request):
    printer = _SummaryPrinter()
    request.config.pluginmanager.register(printer, "tiue-end-to-end-summary")
    printer.suite = EndToEndSuite(SuiteConfig.from_pytest(request.config))
    yield printer.suite
    printer.suite.finish()


@pytest.fixture
def optional_benchmark(request):
    """pytest-benchmark's fixture when the plugin is installed, else None (plain timing)."""
    if request.config.pluginmanager.hasplugin("benchmark"):
        return request.getfixturevalue("benchmark")
    return None


def test_end_to_end(case, end_to_end_suite, optional_benchmark):
    row, batch = case
    try:
        end_to_end_suite.run(row, batch, optional_benchmark)
    except RowSkipped as reason:
        pytest.skip(str(reason))


def test_paired_target_ratios(end_to_end_suite):
    """After the rows: each pair of rows a latency target compares, timed in alternation."""
    if not end_to_end_suite.run_paired():
        pytest.skip("no target had both of its rows measured")
