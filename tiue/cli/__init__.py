"""The `tiue` command line: `tiue sample ...`, `tiue train ...` (also `python -m tiue`)."""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "build_parser", "CommandError"]

# Subcommand name -> module under tiue.cli with add_arguments(parser) and run(args).
COMMANDS = {
    "sample": "Generate images from prompts in one pass.",
    "train": "Distill a teacher into a TiUE student (VSD + KL, captions only).",
    "eval": "Measure a model: FID, precision, recall, F1, density, coverage, text-image agreement.",
    "world": "The shapes world: retrain its models from recipes, write captions, embed models.",
}


class CommandError(Exception):
    """A user error a command reports as one line, exiting non-zero."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiue", description="Loop-free TiUE text-to-image sampling, distillation and evaluation."
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, summary in COMMANDS.items():
        module = importlib.import_module(f"tiue.cli.{name}")
        sub = subparsers.add_parser(
            name,
            help=summary,
            description=module.__doc__,
            # Keep the docstrings' own line breaks: their usage examples are one per line.
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args._run(args)
    except (CommandError, ValueError, TypeError, OSError, NotImplementedError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"tiue {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tiue {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0
