"""A pipeline folder from a shapes teacher recipe still training: the EMA weights of its latest
checkpoint (of the fine-tuning stage once that has begun), for probing distillation settings
before the teacher finishes.

    python studies/shapes_teacher_snapshot.py runs/shapes-teacher runs/teacher-snapshot/final
    tiue train --config configs/shapes-tiue.yaml --teacher runs/teacher-snapshot/final --max-steps 600 ...

The recipe's VAE stage must have finished (its checkpoint is marked finished).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
import yaml
from diffusers import DDIMScheduler

from tiue.data.shapes import vocabulary
from tiue.pipeline import TiUEPipeline
from tiue.world.checkpoints import StageCheckpoint
from tiue.world.datasets import draw_training_set
from tiue.world.teacher import TeacherSettings, build_teacher_unet, teacher_scheduler_config
from tiue.world.text_encoder import build_world_text_encoder
from tiue.world.tokenizer import build_world_tokenizer
from tiue.world.vae import VAESettings, build_world_vae, latent_scaling_factor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the teacher recipe's output folder (holds recipe.yaml, checkpoints/)")
    parser.add_argument("out", type=Path, help="the pipeline folder to write")
    args = parser.parse_args()
    recipe = yaml.safe_load((args.run / "recipe.yaml").read_text())
    vae_state = StageCheckpoint(args.run / "checkpoints", "vae").load()
    teacher_state = StageCheckpoint(args.run / "checkpoints", "teacher").load()
    stage = "teacher"
    finetune_state = StageCheckpoint(args.run / "checkpoints", "teacher_finetune").load()
    if recipe.get("teacher_finetune") and finetune_state is not None:  # the second stage has begun
        teacher_state, stage = finetune_state, "teacher_finetune"
    if vae_state is None or not vae_state["finished"] or teacher_state is None:
        raise SystemExit(f"{args.run}: needs a finished VAE stage and a teacher checkpoint")
    seed = int(recipe.get("seed", 0))
    tokenizer = build_world_tokenizer(args.out.parent / f".{args.out.name}-tokenizer", vocabulary())
    text_encoder = build_world_text_encoder(tokenizer, seed=seed, **(recipe.get("text_encoder") or {}))
    vae_settings = {k: tuple(v) if isinstance(v, list) else v for k, v in (recipe.get("vae") or {}).items()}
    vae = build_world_vae(VAESettings(**vae_settings), recipe["world"]["resolution"])
    vae.load_state_dict(vae_state["modules"]["vae"])
    vae.eval().register_to_config(scaling_factor=latent_scaling_factor(vae, draw_training_set(1024, seed).images))
    settings = {k: tuple(v) if isinstance(v, list) else v for k, v in (recipe.get("teacher") or {}).items()}
    latent_size = vae.config.sample_size // 2 ** (len(vae.config.block_out_channels) - 1)
    teacher_settings = TeacherSettings(**settings)
    unet = build_teacher_unet(teacher_settings, latent_size, text_encoder.config.hidden_size)
    unet.load_state_dict(teacher_state["emas"]["unet"]["model"])
    text_encoder.load_state_dict(teacher_state["emas"]["text_encoder"]["model"])
    if stage == "teacher_finetune":  # its schedule, the first stage's UNet
        teacher_settings = TeacherSettings(**recipe["teacher_finetune"])
    pipe = TiUEPipeline(vae=vae, text_encoder=text_encoder.eval(), tokenizer=tokenizer, unet=unet.eval(),
                        scheduler=DDIMScheduler.from_config(teacher_scheduler_config(teacher_settings)))
    pipe.save_pretrained(args.out, safe_serialization=True)
    shutil.rmtree(args.out.parent / f".{args.out.name}-tokenizer", ignore_errors=True)
    print(f"wrote {args.out} ({stage} step {teacher_state['step']})")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
