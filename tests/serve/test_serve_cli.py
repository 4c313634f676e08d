"""`tiue serve`'s flags are checked before anything is imported or loaded."""

import pytest

from tiue.cli import main


@pytest.mark.parametrize(
    "flags, flag",
    [
        (["--max-batch-size", "0"], "--max-batch-size"),
        (["--max-images", "0"], "--max-images"),
        (["--port", "70000"], "--port"),
        (["--port", "-1"], "--port"),
        (["--max-wait-ms", "-5"], "--max-wait-ms"),
        (["--max-steps", "0"], "--max-steps"),
    ],
)
def test_bad_flags_are_one_line_errors(flags, flag, capsys):
    assert main(["serve", *flags]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tiue serve: error: {flag}: "), err


def test_help_says_loopback_is_the_default(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "default 127.0.0.1" in capsys.readouterr().out
