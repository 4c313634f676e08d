"""The `tiue` command line: `tiue sample ...`, `tiue train ...`, `tiue serve`, `tiue info` (also `python -m tiue`).

Only the chosen subcommand's module is imported, so `tiue --help` and `tiue --version` start in
a fraction of a second instead of importing torch and diffusers for every subcommand's options.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from tiue import __version__

__all__ = ["main", "build_parser", "CommandError"]

# Subcommand name -> module under tiue.cli with add_arguments(parser) and run(args).
COMMANDS = {
    "sample": "Generate images from prompts in one pass.",
    "train": "Distill a teacher into a TiUE student (VSD + KL, captions only).",
    "eval": "Measure a model: FID, precision, recall, F1, density, coverage, text-image agreement.",
    "serve": "A web page and an HTTP API that batch concurrent requests into shared passes.",
    "world": "The shapes world: retrain its models from recipes, write captions, embed models.",
    "info": "Versions, kernel backends (and why any is unavailable) and each op's backend.",
}

# Library notices that tell a tiue user nothing, dropped by logger and exact text (CLI only:
# importing tiue as a library changes no logging): transformers' note that image processors fall
# back to PIL without torchvision (tiue uses none), and diffusers' warning that `.to(dtype)` casts
# modules that should stay float32, when there are none ("[]").
QUIET_NOTICES = {
    "transformers.utils.import_utils": "requires torchvision (not installed); falling back to",
    "diffusers.models.modeling_utils": "that should be kept in float32: []",
}


class CommandError(Exception):
    """A user error a command reports as one line, exiting non-zero."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser, with the options of `command` only: others are listed by name and summary."""
    parser = argparse.ArgumentParser(
        prog="tiue", description="Loop-free TiUE text-to-image sampling, distillation and evaluation."
    )
    parser.add_argument("--version", action="version", version=f"tiue {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        # Keep the docstrings' own line breaks: their usage examples are one per line.
        sub = subparsers.add_parser(name, help=summary, formatter_class=argparse.RawDescriptionHelpFormatter)
        if name == command:
            module = importlib.import_module(f"tiue.cli.{name}")
            sub.description = module.__doc__
            module.add_arguments(sub)
            sub.set_defaults(_run=module.run)
    return parser


def _command(argv: list[str]) -> str | None:
    # The top level takes only flags without values (-h, --version): the first other word names
    # the subcommand (an unknown one is left to argparse, which lists the valid ones).
    return next((word for word in argv if not word.startswith("-")), None)


class _DropNotice(logging.Filter):
    def __init__(self, text: str):
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def quiet_known_notices() -> None:
    """Drop the QUIET_NOTICES messages (and only them); calling it again adds nothing."""
    for name, text in QUIET_NOTICES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropNotice) and f.text == text for f in logger.filters):
            logger.addFilter(_DropNotice(text))


def _user_error(error: Exception) -> bool:
    """Errors a command reports as one line: bad input, unusable files or models, a model that
    produced NaN (FloatingPointError), a kernel backend TIUE_KERNELS forces that cannot run here."""
    if isinstance(error, (CommandError, ValueError, TypeError, OSError, NotImplementedError, FloatingPointError)):
        return True
    dispatch = sys.modules.get("tiue.ops.dispatch")  # loaded if an op ran: no import just for this
    return dispatch is not None and isinstance(error, dispatch.BackendUnavailableError)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_command(argv)).parse_args(argv)
    quiet_known_notices()
    try:
        args._run(args)
    except Exception as error:
        if not _user_error(error):
            raise
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"tiue {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tiue {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
