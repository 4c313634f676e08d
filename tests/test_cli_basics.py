"""The command line's frame: help and version without heavy imports, `tiue info`, one-line
argument errors, and no library notices that mean nothing to a tiue user."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap

import pytest

import tiue
from tiue.cli import COMMANDS, QUIET_NOTICES, main, quiet_known_notices

HEAVY = ("torch", "diffusers", "transformers", "numpy", "triton")


def _run_main(argv: list[str], extra: str = "") -> subprocess.CompletedProcess:
    """main(argv) in a fresh interpreter; prints the heavy modules it imported as the last line."""
    code = textwrap.dedent(
        f"""
        import sys
        from tiue.cli import main
        try:
            code = main({argv!r})
        except SystemExit as exit:
            code = exit.code
        {extra}
        print("heavy:", ",".join(m for m in {HEAVY!r} if m in sys.modules))
        sys.exit(code)
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_lists_every_command_and_imports_nothing_heavy(flag):
    result = _run_main([flag])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "heavy:"
    for name, summary in COMMANDS.items():
        assert name in result.stdout and summary.split()[0] in result.stdout


def test_python_dash_m_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "tiue", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert all(name in result.stdout for name in COMMANDS)


def test_version_prints_the_package_version_and_imports_nothing_heavy():
    result = _run_main(["--version"])
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0] == f"tiue {tiue.__version__}" and lines[-1] == "heavy:"


def test_subcommand_help_imports_only_that_subcommand():
    others = [f"tiue.cli.{name}" for name in COMMANDS if name != "world"]
    result = _run_main(["world", "--help"], extra=f"assert not [m for m in {others!r} if m in sys.modules]")
    assert result.returncode == 0, result.stderr
    assert "tiue world" in result.stdout


def test_unknown_command_names_the_argument_what_came_and_the_choices(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["smaple"])
    assert exit.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument COMMAND: invalid choice: 'smaple'" in error
    assert all(repr(name) in error for name in COMMANDS)


def test_no_command_is_an_error(capsys):
    with pytest.raises(SystemExit) as exit:
        main([])
    assert exit.value.code == 2
    assert "COMMAND" in capsys.readouterr().err


def test_info_reports_versions_backends_and_ops_without_diffusers():
    cheap = "assert 'diffusers' not in sys.modules and 'triton' not in sys.modules"
    result = _run_main(["info"], extra=cheap)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith(f"tiue {tiue.__version__} (")
    for name in ("python", "torch", "diffusers", "transformers", "triton"):
        assert f"\n{name} " in out
    for backend in ("torch", "cpp", "triton", "cuda"):
        assert f"\n  {backend} " in out
    for op in ("ddim_combine", "gaussian_kl", "shared_kv_attention"):
        assert f"\n  {op} " in out


def test_info_says_why_the_extension_is_unavailable():
    code = "import sys; sys.modules['tiue._C'] = None\nfrom tiue.cli import main\nsys.exit(main(['info']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cpp     unavailable: tiue._C is not built" in result.stdout
    assert "ddim_combine" in result.stdout and "cpu: torch" in result.stdout


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_quiet_notices_drop_exactly_the_listed_messages(monkeypatch):
    quiet_known_notices()
    quiet_known_notices()  # idempotent: one filter per logger
    diffusers_log = logging.getLogger("diffusers.models.modeling_utils")
    transformers_log = logging.getLogger("transformers.utils.import_utils")
    assert len([f for f in diffusers_log.filters if type(f).__module__ == "tiue.cli"]) == 1
    collect = _Collect()
    for logger in (diffusers_log, transformers_log):  # transformers' loggers do not propagate
        monkeypatch.setattr(logger, "handlers", [collect])
        monkeypatch.setattr(logger, "level", logging.WARNING)
    kept = [
        "There are modules in UNet2DConditionModel that should be kept in float32: ['norm'].",
        "something else",
    ]
    diffusers_log.warning("There are modules in UNet2DConditionModel that should be kept in float32: [].")
    diffusers_log.warning(kept[0])
    transformers_log.warning(
        "`CLIPImageProcessor` requires torchvision (not installed); falling back to `CLIPImageProcessorPil`"
    )
    transformers_log.warning(kept[1])
    assert collect.messages == kept


def test_sample_run_shows_none_of_the_known_notices(tmp_path):
    """The README's first command, on the embedded model: stderr carries progress only."""
    result = subprocess.run(
        [sys.executable, "-m", "tiue", "sample", "--prompt", "a red circle", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "out" / "grid.png").exists()
    for text in [*QUIET_NOTICES.values(), "torchvision", "should be kept in float32"]:
        assert text not in result.stderr, result.stderr
