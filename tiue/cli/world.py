"""The shapes world: retrain its models from a recipe, write its caption file, embed a model.

    tiue world train --config configs/shapes-teacher.yaml [--output-dir DIR] [--set teacher.steps=10] [--resume | --overwrite]
    tiue world captions --out configs/shapes-captions.txt
    tiue world embed --source runs/shapes-tiue/final --name shapes [--fp16] [--overwrite]
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["add_arguments", "run", "parse_assignment"]


def parse_assignment(text: str) -> tuple[str, object]:
    """'teacher.steps=10' -> ('teacher.steps', 10); the value is read as YAML (numbers, lists),
    by the recipe files' bounded loader."""
    from tiue.yaml_loading import SettingsFileError, load_settings_text

    key, _, value = text.partition("=")
    if not _ or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r:.80}")
    try:
        return key.strip(), load_settings_text(value, key.strip())
    except SettingsFileError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    train = actions.add_parser("train", help="run a recipe (configs/shapes-teacher.yaml, configs/shapes-features.yaml)")
    train.add_argument("--config", type=Path, required=True, help="the recipe YAML")
    train.add_argument("--output-dir", type=Path, help="overrides the recipe's output_dir")
    train.add_argument("--set", type=parse_assignment, action="append", default=[], metavar="KEY=VALUE",
                       help="override a setting, e.g. teacher.steps=10 (repeatable)")
    train.add_argument("--resume", action="store_true",
                       help="continue the run in the output folder from its last checkpoint (same recipe and --set values)")
    train.add_argument("--overwrite", action="store_true", help="delete the run in the output folder and start over")
    captions = actions.add_parser("captions", help="write every one-shape caption of the world, one per line")
    captions.add_argument("--out", type=Path, required=True, help="the .txt file to write")
    embed = actions.add_parser("embed", help="copy a trained model into the package's embedded models")
    embed.add_argument("--source", type=Path, required=True, help="a pipeline folder or a feature-network folder")
    embed.add_argument("--name", required=True, help="the embedded name (e.g. shapes, shapes-teacher, shapes-features)")
    embed.add_argument("--fp16", action="store_true", help="store weights in float16 (half the size)")
    embed.add_argument("--overwrite", action="store_true",
                       help="replace an embedded model of that name (one the package ships, or an earlier embed)")


def run(args: argparse.Namespace) -> None:
    if args.action == "train":
        from tiue.world.recipes import load_recipe, run_recipe

        overrides = dict(args.set)
        if args.output_dir is not None:
            overrides["output_dir"] = str(args.output_dir)
        run_recipe(load_recipe(args.config), overrides, resume=args.resume, overwrite=args.overwrite)
    elif args.action == "captions":
        from tiue.data.shapes import caption_space
        from tiue.files import write_text_atomically

        captions = caption_space()
        write_text_atomically(args.out, "\n".join(captions) + "\n")
        print(f"wrote {len(captions)} captions to {args.out}")
    else:
        from tiue.world.embedding import embed_model

        target = embed_model(args.source, args.name, fp16=args.fp16, overwrite=args.overwrite)
        print(f"embedded {args.source} as {args.name!r} in {target}")
