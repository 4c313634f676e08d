"""Measure a model: FID, precision, recall, F1, density and coverage (k = 5), text-image
agreement, and sampling time per image. Prints a table; --json writes the numbers.

Shapes world (default): prompts and real images come from the generator, features from the
embedded shapes feature network. Real models: --prompt-file, --real-images and local feature
weights (--inception, --clip). Under `torchrun` or `accelerate launch` the prompts are shared
out across processes and the results gathered on rank 0.

    tiue eval --model shapes --steps 4 --num-images 256 --seed 0 --json tiue.json
    tiue eval --model shapes-teacher --mode loop --steps 50 --guidance-scale 3 --json teacher.json

COCO2014 (the paper's Table 1; docs/evaluation.md): GigaGAN's captions.txt against all of
val2014, with clean-fid's protocol (FID, KID), PRDC and CLIP score:

    tiue eval --model senmaonk/loopfree-sd2.1-base --prompt-file gigagan/captions.txt \
        --real-images coco/val2014 --inception inception-2015-12-05.pt --clip clip-vit-base-patch32 \
        --num-images 30000 --out-dir runs/coco30k-images --json table1.json

Without GigaGAN's caption list, `tiue eval coco30k` draws one from COCO's own files:

    tiue eval coco30k --captions annotations/captions_val2014.json --images val2014 --out coco30k

Every input and output is checked before the model loads, each failure one line naming its flag.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tiue.schedule import TIMESTEP_SPACINGS

__all__ = ["add_arguments", "run", "spec_from_args", "check_output_file"]


_PATH_FLAGS = ("prompt_file", "real_images", "features", "inception", "out_dir", "cache_dir", "clip", "json",
               "captions", "images", "out")


def _path(text: str) -> Path | str:
    # Path("") is Path("."): an empty value is kept as "" so that check_paths refuses it in one
    # line instead of it silently meaning the current folder.
    return Path(text) if text else ""


def check_paths(args: argparse.Namespace) -> None:
    for name in _PATH_FLAGS:
        if getattr(args, name, None) == "":
            raise ValueError(f"--{name.replace('_', '-')}: expected a path, got an empty string")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    subcommands = parser.add_subparsers(dest="eval_command", metavar="SUBCOMMAND")
    coco = subcommands.add_parser(
        "coco30k", help="build COCO2014-30K: captions.txt and 256 px reference images from local COCO files")
    coco.add_argument("--captions", type=_path, required=True, help="COCO's annotations/captions_val2014.json")
    coco.add_argument("--images", type=_path, required=True, help="COCO's val2014 image folder")
    coco.add_argument("--out", type=_path, required=True,
                      help="output folder (build.json, captions.txt, pairs.json, reference/); a rebuild must use its settings")
    coco.add_argument("--num-pairs", type=int, default=30_000, help="image-caption pairs (default 30000)")
    coco.add_argument("--seed", dest="pair_seed", type=int, default=0, help="seed of the draw (default 0)")
    add = parser.add_argument
    add("--model", help="embedded name, local pipeline folder or hub id (default: the embedded default model)")
    add("--steps", type=int, default=4, help="K: decoder steps (loopfree) or DDIM steps (loop) (default 4)")
    add("--mode", choices=("loopfree", "loop"), default="loopfree", help="sampler (default loopfree)")
    add("--guidance-scale", type=float,
        help="classifier-free guidance, in either mode (default none: distilled students are trained without it)")
    add("--timestep-spacing", choices=TIMESTEP_SPACINGS,
        help="DDIM timestep spacing (default: the model scheduler's own; trailing runs 1 step at t = 999)")
    add("--num-images", type=int, default=256, help="images to generate, k + 1 to 1,000,000 (default 256)")
    add("--seed", type=int, default=0, help="image i uses seed + i; also picks the shapes-world prompts (default 0)")
    add("--batch-size", type=int, default=64, help="images per sampler call (default 64)")
    add("--prompt-file", type=_path, help="prompts, one per line, cycled to --num-images (real models)")
    add("--real-images", type=_path,
        help="folder of real images to compare with (with --prompt-file; read by clean-fid's rule: hidden files skipped)")
    add("--features", type=_path, help="shapes feature network folder (default: the embedded one)")
    add("--inception", type=_path,
        help="local TorchScript Inception file (inception-2015-12-05.pt) for FID/KID/PRDC; required with --prompt-file "
             "(real models; docs/evaluation.md)")
    add("--fid-protocol", choices=("clean", "legacy_tensorflow"), default="clean",
        help="Inception preprocessing: clean-fid's clean mode, the paper's (default), or legacy_tensorflow")
    add("--no-kid", dest="kid", action="store_false", help="skip KID (reported with --inception features only)")
    add("--out-dir", type=_path,
        help="write generated images here as they are made; a rerun with the same settings and model files resumes "
             "from them (default: a temporary folder)")
    add("--cache-dir", type=_path,
        help="cache of real-image features (default ~/.cache/tiue/eval; 'none' disables it)")
    add("--no-progress", dest="progress", action="store_false", help="no progress bars")
    add("--clip", type=_path, help="local CLIP model folder for CLIP score (real models)")
    add("--nearest-k", type=int, default=5, help="k of the PRDC manifolds, >= 1 (default 5)")
    add("--device", help="torch device (default: cuda if available, else cpu)")
    add("--dtype", help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)")
    add("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    add("--json", type=_path, help="write the metrics to this JSON file")


def check_output_file(flag: str, path: Path) -> None:
    """Fail before the evaluation, not after it, when `path` cannot be written."""
    from tiue.files import check_writable_folder

    if path.is_dir():
        raise ValueError(f"{flag}: expected a file path, got a folder: {path}")
    check_writable_folder(flag, path.parent)


def spec_from_args(args: argparse.Namespace):
    from tiue.embedded import default_model
    from tiue.eval.runner import EvalSpec

    if args.model is not None and not args.model.strip():
        raise ValueError(f"--model: expected an embedded name, a local pipeline folder or a hub id, got {args.model!r}")
    model = args.model or default_model()
    if model is None:
        raise ValueError("--model: required (this installation has no embedded default model)")
    return EvalSpec(
        model=model,
        steps=args.steps,
        mode=args.mode,
        guidance_scale=args.guidance_scale,
        timestep_spacing=args.timestep_spacing,
        num_images=args.num_images,
        seed=args.seed,
        batch_size=args.batch_size,
        prompt_file=args.prompt_file,
        real_images=args.real_images,
        features=args.features,
        inception=args.inception,
        clip=args.clip,
        nearest_k=args.nearest_k,
        device=args.device,
        dtype=args.dtype,
        out_dir=args.out_dir,
        cache_dir=args.cache_dir,
        fid_protocol=args.fid_protocol,
        kid=args.kid,
        progress=args.progress,
    )


def run(args: argparse.Namespace) -> None:
    check_paths(args)
    if getattr(args, "eval_command", None) == "coco30k":
        from tiue.eval.coco import build_coco_subset

        out = build_coco_subset(args.captions, args.images, args.out, args.num_pairs, args.pair_seed)
        print(f"wrote {out / 'captions.txt'}, {out / 'pairs.json'} and {out / 'reference'}/")
        return
    import torch

    from tiue.eval.report import format_table, write_json
    from tiue.eval.runner import evaluate
    from tiue.eval.sharding import ProcessGroup

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    spec = spec_from_args(args)
    spec.check()
    from tiue.cli.sample import check_device_flags

    check_device_flags(args.device, args.dtype)
    if args.json is not None:
        check_output_file("--json", args.json)
    group = ProcessGroup.from_environment()
    try:
        result = evaluate(spec, group)
        if result is None:
            return
        label = f"{spec.model} ({spec.mode}, {spec.steps} steps" + (
            f", CFG {spec.guidance_scale:g})" if spec.guidance_scale is not None else ")"
        )
        print(format_table([(label, result)]))
        if result.get("kid") is not None:
            print(f"KID: {result['kid']:.5f}")
        if "clip_score" in result:
            print(f"CLIP score ({result['clip_model']}): {result['clip_score']:.4f}")
        if args.json is not None:
            write_json(args.json, result)
            print(f"wrote {args.json}")
    finally:
        group.barrier()
        group.close()
