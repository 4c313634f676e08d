"""Measure a model: FID, precision, recall, F1, density and coverage (k = 5), text-image
agreement, and sampling time per image. Prints a table; --json writes the numbers.

Shapes world (default): prompts and real images come from the generator, features from the
embedded shapes feature network. Real models: --prompt-file, --real-images and local feature
weights (--inception, --clip). Under `torchrun` or `accelerate launch` the prompts are shared
out across processes and the results gathered on rank 0.

    tiue eval --model shapes --steps 4 --num-images 256 --seed 0 --json tiue.json
    tiue eval --model shapes-teacher --mode loop --steps 50 --guidance-scale 3 --json teacher.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tiue.schedule import TIMESTEP_SPACINGS

__all__ = ["add_arguments", "run", "spec_from_args"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument
    add("--model", help="embedded name, local pipeline folder or hub id (default: the embedded default model)")
    add("--steps", type=int, default=4, help="K: decoder steps (loopfree) or DDIM steps (loop) (default 4)")
    add("--mode", choices=("loopfree", "loop"), default="loopfree", help="sampler (default loopfree)")
    add("--guidance-scale", type=float,
        help="classifier-free guidance, in either mode (default none: distilled students are trained without it)")
    add("--timestep-spacing", choices=TIMESTEP_SPACINGS,
        help="DDIM timestep spacing (default: the model scheduler's own; trailing runs 1 step at t = 999)")
    add("--num-images", type=int, default=256, help="images to generate (default 256)")
    add("--seed", type=int, default=0, help="image i uses seed + i; also picks the shapes-world prompts (default 0)")
    add("--batch-size", type=int, default=64, help="images per sampler call (default 64)")
    add("--prompt-file", type=Path, help="prompts, one per line, cycled to --num-images (real models)")
    add("--real-images", type=Path, help="folder of real images to compare with (with --prompt-file)")
    add("--features", type=Path, help="shapes feature network folder (default: the embedded one)")
    add("--inception", type=Path, help="local TorchScript Inception file for FID/PRDC (real models)")
    add("--clip", type=Path, help="local CLIP model folder for CLIP score (real models)")
    add("--nearest-k", type=int, default=5, help="k of the PRDC manifolds (default 5)")
    add("--device", help="torch device (default: cuda if available, else cpu)")
    add("--dtype", help="fp32, fp16 or bf16 (default: fp16 on CUDA, fp32 on CPU)")
    add("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    add("--json", type=Path, help="write the metrics to this JSON file")


def spec_from_args(args: argparse.Namespace):
    from tiue.embedded import default_model
    from tiue.eval.runner import EvalSpec

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
    )


def run(args: argparse.Namespace) -> None:
    import torch

    from tiue.eval.report import format_table, write_json
    from tiue.eval.runner import evaluate
    from tiue.eval.sharding import ProcessGroup

    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    spec = spec_from_args(args)
    spec.validate()
    from tiue.cli.sample import check_device_flags

    check_device_flags(args.device, args.dtype)
    group = ProcessGroup.from_environment()
    try:
        result = evaluate(spec, group)
        if result is None:
            return
        label = f"{spec.model} ({spec.mode}, {spec.steps} steps" + (
            f", CFG {spec.guidance_scale:g})" if spec.guidance_scale is not None else ")"
        )
        print(format_table([(label, result)]))
        if "clip_score" in result:
            print(f"CLIP score: {result['clip_score']:.4f}")
        if args.json is not None:
            write_json(args.json, result)
            print(f"wrote {args.json}")
    finally:
        group.barrier()
        group.close()
