"""Generate images with a TiUE pipeline: one PNG per image (named by prompt index and seed)
and a grid PNG, written to --out. Image i of prompt p is seeded with seed + p, so the images
do not depend on --batch-size, nor on the number of processes: under `torchrun` or
`accelerate launch` each process samples its own block of the prompts, and rank 0 gathers
the images and writes the grid."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tiue.devices import DTYPE_NAMES
from tiue.embedded import model_or_default
from tiue.eval.sharding import ProcessGroup
from tiue.files import atomic_path, check_writable_folder
from tiue.images import make_grid
from tiue.schedule import TIMESTEP_SPACINGS

__all__ = ["add_arguments", "run", "read_prompts", "image_name"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        help="hub id, local folder of a TiUE-distilled SD or SDXL pipeline (SDXL folders are recognised "
        "by model_index.json), or an embedded model's name "
        "(default: the embedded default model, when installed)",
    )
    parser.add_argument("--prompt", action="append", default=[], help="a prompt (repeatable)")
    parser.add_argument("--prompt-file", type=Path, help="a text file with one prompt per line")
    parser.add_argument("--steps", type=int, default=4, help="K, the decoder steps (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="base seed; prompt p uses seed + p (default 0)")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts per pipeline call (default 8)")
    parser.add_argument("--height", type=int, help="image height in pixels, at most 16384 (default: the model's)")
    parser.add_argument("--width", type=int, help="image width in pixels, at most 16384 (default: the model's)")
    parser.add_argument("--mode", choices=("loopfree", "loop"), default="loopfree", help="sampling mode")
    parser.add_argument("--guidance-scale", type=float, default=1.0,
                        help="classifier-free guidance; 1 (default) is none, what distilled students are trained for")
    parser.add_argument("--negative-prompt", help="what guidance steers away from (default: the empty prompt)")
    parser.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS,
                        help="DDIM timestep spacing (default: the model scheduler's own, as it was trained)")
    parser.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPE_NAMES), help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument(
        "--fast", action="store_true",
        help="compiled fast path (CUDA graphs on CUDA; OpenVINO on a CPU in fp32 when installed)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder")


def read_prompts(prompts: list[str], prompt_file: Path | None) -> list[str]:
    """Prompts from --prompt flags, then --prompt-file lines (blank lines skipped)."""
    prompts = list(prompts)
    if prompt_file is not None:
        if not prompt_file.is_file():
            raise ValueError(f"--prompt-file: no such file: {prompt_file}")
        try:
            text = prompt_file.read_text(encoding="utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"--prompt-file: {prompt_file} is not UTF-8 text (byte {error.start}: {error.reason})") from None
        prompts += [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError("--prompt/--prompt-file: no prompt given; pass --prompt TEXT or --prompt-file FILE")
    return prompts


def check_steps(pipe, steps: int) -> None:
    """--steps against the model's schedule, before any image is sampled."""
    from tiue.schedule import ddim_timesteps

    try:
        ddim_timesteps(pipe.scheduler, steps)
    except ValueError as error:
        raise ValueError(f"--steps: {error}") from None


def check_size(pipe, args: argparse.Namespace, images: int) -> None:
    """--height/--width against the model, before any image is sampled: not below the smallest
    size its GroupNorms take, nor past what the device's memory can hold for one batch."""
    from tiue.model_checks import check_pipeline_size

    default = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = args.height or default, args.width or default
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and (value < 1 or value % pipe.vae_scale_factor):
            raise ValueError(
                f"{flag}: expected a positive multiple of {pipe.vae_scale_factor} (the VAE's downsampling factor), got {value}"
            )
    try:
        check_pipeline_size(pipe, height, width, images, args.steps, args.guidance_scale > 1, args.mode, "pil")
    except ValueError as error:  # "height: ..." / "height, width: ..." -> the flags' names
        names, _, rest = str(error).partition(": ")
        flags = ", ".join("--" + name for name in names.split(", "))
        raise ValueError(f"{flags}: {rest}") from None


def check_device_flags(device, dtype) -> None:
    """--device and --dtype before any model loads (their errors name the flags)."""
    from tiue.devices import resolve_device, resolve_dtype

    try:
        resolve_dtype(dtype, resolve_device(device))
    except ValueError as error:  # "device: ..." / "dtype: ..."
        raise ValueError(f"--{error}") from None


def check_seed(flag: str, seed: int, count: int) -> None:
    """Image i is seeded with seed + i: every such seed must fit torch's 64-bit seeds."""
    if seed < 0 or seed + count - 1 > 2**63 - 1:
        raise ValueError(f"{flag}: expected 0 <= seed <= 2**63 - {count} (image i uses seed + i), got {seed}")


def image_name(prompt_index: int, seed: int) -> str:
    return f"{prompt_index:05d}-seed{seed}.png"


def _save_png(image, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")


def run(args: argparse.Namespace) -> None:
    from tiue.sampling import load_pipeline

    prompts = read_prompts(args.prompt, args.prompt_file)
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an integer >= 1, got {getattr(args, name)}")
    check_seed("--seed", args.seed, len(prompts))
    if not (math.isfinite(args.guidance_scale) and args.guidance_scale >= 0):
        raise ValueError(f"--guidance-scale: expected a finite number >= 0 (1 = no guidance), got {args.guidance_scale}")
    check_device_flags(args.device, args.dtype)
    check_writable_folder("--out", args.out)
    model = model_or_default(args.model)
    if args.mode == "loopfree":
        from tiue.students import not_a_student_warning

        warning = not_a_student_warning(model)
        if warning is not None:
            print(f"tiue sample: warning: {warning}", file=sys.stderr)
    pipe = load_pipeline(model, args.device, args.dtype, args.fast).with_timestep_spacing(args.timestep_spacing)
    check_steps(pipe, args.steps)
    check_size(pipe, args, min(args.batch_size, len(prompts)))
    group = ProcessGroup.from_environment()
    try:
        _sample_shard(pipe, prompts, group, args)
    finally:
        group.barrier()
        group.close()


def _sample_shard(pipe, prompts: list[str], group, args: argparse.Namespace) -> None:
    """Sample this process's block of prompts; rank 0 gathers every image and writes the grid."""
    mine = list(group.shard(len(prompts)))
    images = []
    starts = range(0, len(mine), args.batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not group.is_main):
        indices = mine[start : start + args.batch_size]
        batch = [prompts[i] for i in indices]
        seeds = [args.seed + i for i in indices]
        generators = [torch.Generator(pipe.device).manual_seed(s) for s in seeds]
        result = pipe(
            batch,
            num_inference_steps=args.steps,
            height=args.height,
            width=args.width,
            generator=generators,
            mode=args.mode,
            guidance_scale=args.guidance_scale,
            negative_prompt=args.negative_prompt,
        ).images
        # Files appear only once their batch succeeded, each written whole (temp name + rename).
        args.out.mkdir(parents=True, exist_ok=True)
        for index, image, seed in zip(indices, result, seeds):
            _save_png(image, args.out / image_name(index, seed))
        images += result
    gathered = group.gather(images)
    if not group.is_main:
        return
    images = [image for part in gathered for image in part]  # blocks arrive in rank order
    _save_png(make_grid(images), args.out / "grid.png")
    print(f"wrote {len(images)} images and grid.png to {args.out}")
