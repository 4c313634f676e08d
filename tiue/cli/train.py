"""Distil a Stable Diffusion teacher into a TiUE student from captions only (VSD + KL).

Settings come from the defaults, then --config FILE.yaml, then the flags given (flags win).
One process: `tiue train ...`; many: `accelerate launch -m tiue train ...` or
`torchrun --nproc_per_node N -m tiue train ...` (--batch-size is per process).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tiue.train.config import (
    KL_TARGETS, LORA_INITS, LORA_LOSSES, LR_SCHEDULERS, MIXED_PRECISIONS, NULL_PROMPT_SCOPES, REPORT_TO, TIMESTEP_SPACINGS,
)

__all__ = ["add_arguments", "run", "config_from_args"]


def _comma_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Every default is SUPPRESS: only flags actually given override the YAML file and defaults.
    s = argparse.SUPPRESS
    parser.argument_default = s
    add = parser.add_argument
    add("--config", type=Path, help="YAML file of settings (keys as the flags, dashes or underscores; "
        "diffusers' training-example names such as train_batch_size or max_train_steps also read)")
    models = parser.add_argument_group("models and data")
    models.add_argument("--teacher", help="SD 1.x/2.x or SDXL-class pipeline: hub id or local folder")
    models.add_argument("--student", help="initial student UNet (pipeline or UNet folder); default the teacher's")
    models.add_argument("--revision", help="Hub revision (branch, tag or commit) of --teacher and --student")
    models.add_argument("--variant", help="weight-file variant of --teacher and --student, e.g. fp16 "
                        "(loads unet/diffusion_pytorch_model.fp16.safetensors, ...)")
    models.add_argument("--captions", help=".txt (one per line), .jsonl, or a folder of them")
    models.add_argument("--caption-field", help="field of a .jsonl record, dotted for nesting (e.g. Task2.Caption); "
                        "default: Caption, Caption:, caption (as the official dataset), then text, prompt, "
                        "Task2.Caption")
    models.add_argument("--output-dir", help="where checkpoints, logs and final/ go (default runs/tiue)")
    length = parser.add_argument_group("length and batch")
    length.add_argument("--max-steps", type=int, help="optimizer steps (default: --epochs worth)")
    length.add_argument("--epochs", type=int, help="passes over the captions (default 1)")
    length.add_argument("--batch-size", type=int, help="prompts per process per micro-step (default 8)")
    length.add_argument("--global-batch-size", type=int, help="prompts per micro-step over all processes")
    length.add_argument("--gradient-accumulation-steps", type=int, help="micro-steps per optimizer step (default 1)")
    length.add_argument(
        "--resolution", type=int,
        help="image size in pixels (default: the teacher's); for an SDXL teacher also its time ids (original and target size)",
    )
    method = parser.add_argument_group("method (defaults from the paper)")
    method.add_argument("--num-steps", type=int, help="K, the student's decoder steps (default 4)")
    method.add_argument("--lambda-kl", type=float,
                        help="weight of the KL sum at --kl-reference-batch-size prompts per process (default 0.1, the "
                        "official weight at the official 8 per GPU); another per-process batch B scales the sum by "
                        "reference / B, so the KL-to-VSD ratio is the same whatever the batch, accumulation and "
                        "process split")
    method.add_argument("--kl-reference-batch-size", type=int,
                        help="the per-process batch at which --lambda-kl is the KL sum's weight as given (default 8)")
    method.add_argument("--kl-target", choices=KL_TARGETS,
                        help="what the KL pulls to N(0, 1): the raw decoder outputs (default, the paper's) or, for a "
                        "v-prediction teacher, each decoder's noise prediction (epsilon)")
    method.add_argument("--guidance-scale", type=float, help="CFG scale of both teachers (default 4.5)")
    method.add_argument("--learning-rate", type=float, help="student Adam lr (default 1e-6)")
    method.add_argument("--learning-rate-lora", type=float, help="fake-score LoRA Adam lr (default 1e-3)")
    method.add_argument("--lr-scheduler", choices=LR_SCHEDULERS,
                        help="LR schedule of both optimizers, as diffusers' get_scheduler (default "
                        "constant_with_warmup); decaying ones end at the run's last step")
    method.add_argument("--lr-warmup-steps", type=int, help="linear LR warm-up steps from 0 (default 0)")
    method.add_argument("--lora-rank", type=int, help="default 64")
    method.add_argument("--lora-alpha", type=float, help="default 108")
    method.add_argument("--lora-targets", type=_comma_list, help="comma-separated module names (default to_q,to_v)")
    method.add_argument("--lora-init", choices=LORA_INITS, help="LoRA initialisation (default: peft's default, as the official script)")
    method.add_argument("--lora-loss", choices=LORA_LOSSES,
                        help="the fake-score LoRA's loss: alphabar (default, the official script's: epsilon MSE "
                        "weighted by sqrt(alphabar_t)) or teacher (the teacher's own objective, epsilon, v or x0 MSE "
                        "unweighted; for a v-prediction teacher on a zero-terminal-SNR schedule, where the "
                        "alphabar weight vanishes at high noise)")
    method.add_argument("--lora-null-prompt-probability", type=float, help="chance the LoRA loss uses the null prompt (default 0.1)")
    method.add_argument("--lora-null-prompt-scope", choices=NULL_PROMPT_SCOPES,
                        help="one null-prompt draw per batch (default, official) or per sample")
    method.add_argument("--timestep-spacing", choices=TIMESTEP_SPACINGS,
                        help="spacing of the student's K timesteps (default: the teacher scheduler's own); "
                        "recorded in the exported scheduler, so the student samples with it")
    method.add_argument("--ema-decay", type=float, help="default 0.9999")
    method.add_argument("--max-grad-norm", type=float, help="gradient-norm clip of both models (default 1.0)")
    method.add_argument("--clip-model", help="CLIP model (hub id or folder) for the optional alignment loss")
    method.add_argument("--lambda-clip", type=float, help="weight of the CLIP alignment loss (needs --clip-model)")
    method.add_argument("--clip-margin", type=float, help="tau in relu(tau - cos) (default 1.0: plain 1 - cos)")
    machinery = parser.add_argument_group("machinery")
    machinery.add_argument("--mixed-precision", choices=MIXED_PRECISIONS, help="default no (fp16 needs CUDA)")
    machinery.add_argument("--half-precision-teacher", type=_bool, nargs="?", const=True,
                           help="keep the frozen UNet weights in the mixed dtype (default false: fp32, as the official script)")
    machinery.add_argument("--gradient-checkpointing", type=_bool, nargs="?", const=True,
                           help="trade compute for memory in both UNets (default false; on in the official run and "
                           "configs/sd21-base.yaml)")
    machinery.add_argument("--allow-tf32", type=_bool, nargs="?", const=True,
                           help="TF32 matmuls and cuDNN convolutions on Ampere and newer GPUs (default true; "
                           "false: full fp32)")
    machinery.add_argument("--use-8bit-adam", type=_bool, nargs="?", const=True,
                           help="bitsandbytes' 8-bit AdamW (no weight decay) for both models (needs bitsandbytes)")
    machinery.add_argument("--checkpoint-every", type=int, help="optimizer steps between checkpoints (default 500)")
    machinery.add_argument("--keep-checkpoints", type=int, help="how many recent checkpoints to keep (default 3)")
    machinery.add_argument("--resume", help="'latest' or a checkpoint folder")
    machinery.add_argument("--overwrite", type=_bool, nargs="?", const=True,
                           help="delete an earlier run's checkpoints and final/ in --output-dir and start over")
    machinery.add_argument("--allow-setting-changes", type=_bool, nargs="?", const=True,
                           help="--resume with method settings (seed, --lambda-kl, --guidance-scale, K, learning rates, "
                           "...) other than the checkpoint's: without it such a resume is refused; with it the changes "
                           "are logged and recorded in the run (a changed --seed reshuffles from the next epoch on)")
    machinery.add_argument("--max-consecutive-nonfinite", type=int,
                           help="stop after this many steps in a row with a non-finite loss (default 10; fp16 loss-scale "
                           "overflows are skipped by the scaler and never stop the run)")
    machinery.add_argument("--validate-every", type=int, help="steps between validation grids (default 0: at the end only)")
    machinery.add_argument("--validation-prompts", action="append", help="a validation prompt (repeatable)")
    machinery.add_argument("--report-to", choices=REPORT_TO,
                           help="tracker of the run's scalars (default tensorboard when installed; wandb needs wandb)")
    machinery.add_argument("--log-every", type=int, help="steps between logged points (default 1)")
    machinery.add_argument("--seed", type=int, help="default 0")
    machinery.add_argument("--device", choices=("cpu", "cuda"), help="default cuda when available")
    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument("--push-to-hub", type=_bool, nargs="?", const=True,
                     help="upload final/ when the run ends; the repo is created (or found) at start-up")
    hub.add_argument("--hub-model-id", help="NAME or OWNER/NAME of the repo (default: the --output-dir folder's name)")
    hub.add_argument("--hub-token", help="Hub token (default: HF_TOKEN or `hf auth login`'s); never written to logs "
                     "or checkpoints")


def config_from_args(args: argparse.Namespace):
    from tiue.train.config import TrainConfig

    given = {k: v for k, v in vars(args).items() if not k.startswith("_") and k not in ("command", "config")}
    return TrainConfig.from_sources(getattr(args, "config", None), given)


def run(args: argparse.Namespace) -> None:
    from tiue.train import Trainer

    config = config_from_args(args)
    result = Trainer(config).fit()
    if result.stopped_early:
        print(f"stopped at step {result.step}; resume with --resume latest (checkpoint {result.checkpoint})")
    else:
        print(f"trained {result.step} steps; pipeline written to {result.final}")
        if result.hub_repo is not None:
            print(f"pushed to the Hub repo {result.hub_repo}")
