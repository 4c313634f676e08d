"""Trainer(config).fit(): distil a Stable Diffusion teacher into a TiUE student.

The trainer owns the run's state and its loop: data position, optimizer steps, EMA,
checkpoints, logging, validation and the final export. The loss computations live in
tiue.train.step, the formulas in tiue.train.losses.

Distribution, mixed precision and gradient accumulation go through accelerate: DDP by
default (FSDP selectable), gloo on CPU, `accelerate launch` and `torchrun` alike.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tiue.train import checkpoint as ckpt
from tiue.train.config import TrainConfig, flag_name
from tiue.train.data import CaptionSampler, SamplerPosition, load_captions
from tiue.train.ema import EMA
from tiue.train.models import add_fake_score_lora, load_lora_state_dict, load_student, load_teacher_parts, lora_state_dict
from tiue.train.monitoring import LossHistory, format_losses, plot_loss_curve, resolve_report_to
from tiue.train.randomness import draw_step
from tiue.train.signals import StopRequest
from tiue.train.step import DistillationStep

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError"]

_log = logging.getLogger("tiue.train")


class NonFiniteLossError(ValueError):
    """Too many consecutive steps had a non-finite loss or gradient norm."""


@dataclass
class TrainResult:
    step: int
    stopped_early: bool  # a signal asked the run to stop
    checkpoint: Path | None
    final: Path | None


class Trainer:
    """A distillation run. Everything that can be checked is checked before any compute."""

    def __init__(self, config: TrainConfig):
        config.validate()
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.captions = load_captions(config.captions, config.caption_field)
        self.accelerator = self._make_accelerator()
        acc = self.accelerator
        self.device = acc.device
        self.batch_size = config.per_process_batch_size(acc.num_processes)
        self.sampler = CaptionSampler(
            len(self.captions), self.batch_size, acc.num_processes, acc.process_index, config.seed
        )
        self.max_steps = config.max_steps or max(
            1, config.epochs * self.sampler.batches_per_epoch // config.gradient_accumulation_steps
        )
        self._enable_fast_math()
        from accelerate.utils import set_seed

        set_seed(config.seed)
        self._build_models()
        self._build_optimizers()
        self._prepare()

        self.step = 0
        self.micro_step = 0
        self.position = SamplerPosition()
        self.history = LossHistory()
        self.consecutive_nonfinite = 0
        self.nonfinite_total = 0
        self.last_checkpoint: Path | None = None
        self._rng_to_restore: dict | None = None
        if config.resume:
            self._resume(config.resume)

    # -- setup ---------------------------------------------------------------------------

    def _make_accelerator(self):
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        config = self.config
        if config.device not in (None, "cpu", "cuda"):
            raise ValueError(
                f"{flag_name('device')}: expected cpu or cuda (each process takes its own GPU), got {config.device!r}"
            )
        use_cpu = config.device == "cpu" or (config.device is None and not torch.cuda.is_available())
        if config.device == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"{flag_name('device')}: cuda requested but CUDA is not available on this machine")
        self.report_to = resolve_report_to(config.report_to)
        fsdp_plugin = None
        if config.distributed == "fsdp":
            from accelerate import FullyShardedDataParallelPlugin

            # use_orig_params: the fake-score UNet mixes frozen and trainable weights.
            fsdp_plugin = FullyShardedDataParallelPlugin(use_orig_params=True)
        return Accelerator(
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            cpu=use_cpu,
            log_with="tensorboard" if self.report_to == "tensorboard" else None,
            project_dir=str(self.output_dir),
            # LR schedulers step once per real optimizer step, not once per process.
            step_scheduler_with_optimizer=False,
            fsdp_plugin=fsdp_plugin,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
        )

    def _enable_fast_math(self) -> None:
        if self.config.allow_tf32 and self.device.type == "cuda":
            if torch.cuda.get_device_capability(self.device)[0] >= 8:  # Ampere and newer
                torch.backends.cuda.matmul.allow_tf32 = True
                torch.backends.cudnn.allow_tf32 = True

    @property
    def weight_dtype(self) -> torch.dtype:
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.accelerator.mixed_precision, torch.float32)

    def _build_models(self) -> None:
        config = self.config
        parts = load_teacher_parts(config.teacher, self.weight_dtype)
        self.tokenizer, self.text_encoder, self.vae = parts.tokenizer, parts.text_encoder, parts.vae
        self.scheduler = parts.scheduler
        self.fake_score_unet = parts.unet  # frozen teacher + fake-score LoRA, one UNet
        vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.resolution = config.resolution or parts.unet.config.sample_size * vae_factor
        if self.resolution % vae_factor:
            raise ValueError(
                f"{flag_name('resolution')}: must be a multiple of {vae_factor} (the VAE's downsampling "
                f"factor), got {self.resolution}"
            )
        latent = self.resolution // vae_factor
        self.latent_shape = (parts.unet.config.in_channels, latent, latent)
        if config.num_steps > self.scheduler.config.num_train_timesteps:
            raise ValueError(
                f"{flag_name('num_steps')}: expected 1 <= K <= {self.scheduler.config.num_train_timesteps}, "
                f"got {config.num_steps}"
            )
        if config.vsd_max_timestep >= self.scheduler.config.num_train_timesteps:
            raise ValueError(
                f"{flag_name('vsd_max_timestep')}: expected < {self.scheduler.config.num_train_timesteps} "
                f"(the teacher's training timesteps), got {config.vsd_max_timestep}"
            )
        self.student = load_student(config.student, parts.unet, config.teacher)
        self.student_unet = self.student.unet
        self.lora_params = add_fake_score_lora(
            self.fake_score_unet, config.lora_rank, config.lora_alpha, config.lora_targets
        )
        if config.gradient_checkpointing:
            self.student_unet.enable_gradient_checkpointing()
            self.fake_score_unet.enable_gradient_checkpointing()
        self.text_encoder.to(self.device)
        self.vae.to(self.device)

    def _build_optimizers(self) -> None:
        from diffusers.optimization import get_scheduler

        config = self.config
        self.student_optimizer = torch.optim.Adam(self.student.parameters(), lr=config.learning_rate)
        self.lora_optimizer = torch.optim.Adam(self.lora_params, lr=config.learning_rate_lora)
        self.student_lr = get_scheduler(
            "constant_with_warmup", self.student_optimizer, num_warmup_steps=config.lr_warmup_steps
        )
        self.lora_lr = get_scheduler("constant_with_warmup", self.lora_optimizer, num_warmup_steps=config.lr_warmup_steps)

    def _prepare(self) -> None:
        acc = self.accelerator
        self.student_model, self.fake_score_model, self.student_optimizer, self.lora_optimizer = acc.prepare(
            self.student, self.fake_score_unet, self.student_optimizer, self.lora_optimizer
        )
        self.ema = EMA(self.student_unet, self.config.ema_decay)
        self.null_text = self._encode([""])  # once per run
        self.clip = None
        if self.config.clip_model:
            from tiue.train.clip_alignment import ClipAlignment

            self.clip = ClipAlignment(self.config.clip_model, self.device, self.weight_dtype)
        self.validation_text = self._encode(list(self.config.validation_prompts)) if self.config.validation_prompts else None
        self.step_fn = DistillationStep(
            student=self.student_model,
            fake_score=self.fake_score_model,
            fake_score_unwrapped=self.fake_score_unet,
            scheduler=self.scheduler,
            null_text=self.null_text,
            num_steps=self.config.num_steps,
            guidance_scale=self.config.guidance_scale,
            lambda_kl=self.config.lambda_kl,
            device=self.device,
            clip=self.clip,
            vae=self.vae,
            lambda_clip=self.config.lambda_clip,
            clip_margin=self.config.clip_margin,
            autocast=self.accelerator.autocast,
        )

    @torch.no_grad()
    def _encode(self, prompts: list[str]) -> torch.Tensor:
        """Text embeddings of a batch of prompts: one text-encoder call."""
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=self.tokenizer.model_max_length, truncation=True, return_tensors="pt"
        )
        return self.text_encoder(tokens.input_ids.to(self.device))[0]

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        acc = self.accelerator
        config = self.config
        if acc.is_main_process:
            ckpt.remove_stale_temporaries(self.checkpoint_dir)
            if self.report_to == "tensorboard":
                acc.init_trackers("tiue-train", config=_tracker_config(config))
        if self._rng_to_restore is not None:
            ckpt.restore_rng_state(self._rng_to_restore)
        progress = tqdm(
            total=self.max_steps, initial=self.step, unit="step", desc="distilling",
            disable=not acc.is_local_main_process, dynamic_ncols=True,
        )
        stopped = False
        with StopRequest() as stop:
            while self.step < self.max_steps:
                started = time.perf_counter()
                record = self._optimizer_step()
                self.step += 1
                record["samples_per_s"] = (
                    self.batch_size * acc.num_processes * config.gradient_accumulation_steps
                ) / (time.perf_counter() - started)
                self.history.append(self.step, record)
                if self.step % config.log_every == 0 and self.report_to == "tensorboard":
                    acc.log(record, step=self.step)
                progress.update(1)
                progress.set_postfix(format_losses(record), refresh=False)
                if config.validate_every and self.step % config.validate_every == 0:
                    self.validate()
                stopped = self._any_process(stop.requested)
                if stopped or self.step % config.checkpoint_every == 0 or self.step == self.max_steps:
                    self.save_checkpoint()
                if stopped:
                    if acc.is_main_process:
                        _log.warning("stop requested (%s): checkpoint written at step %d", stop.signal_name, self.step)
                    break
        progress.close()
        final = None
        if not stopped:
            final = self._finish()
        acc.end_training()
        return TrainResult(step=self.step, stopped_early=stopped, checkpoint=self.last_checkpoint, final=final)

    def _optimizer_step(self) -> dict[str, float]:
        """gradient_accumulation_steps micro-steps and one optimizer step of each model."""
        acc = self.accelerator
        config = self.config
        sums = torch.zeros(4, device=self.device)  # vsd, kl, lora, clip
        nonfinite = 0
        backwards = {"student": 0, "lora": 0}
        norms = {"grad_norm/student": 0.0, "grad_norm/lora": 0.0}
        for _ in range(config.gradient_accumulation_steps):
            with acc.accumulate(self.student_model, self.fake_score_model):
                losses, finite = self._micro_step()
                sums += losses
                for name, ok in finite.items():
                    backwards[name] += int(ok)
                    nonfinite += int(not ok)
                if acc.sync_gradients:
                    applied, norms["grad_norm/student"] = self._apply(
                        self.student_model.parameters(), self.student_optimizer, self.student_lr, backwards["student"]
                    )
                    if applied:
                        self.ema.update(self.student_unet)
                    elif backwards["student"]:
                        nonfinite += 1  # the gradient norm was not finite
                    applied, norms["grad_norm/lora"] = self._apply(
                        self.lora_params, self.lora_optimizer, self.lora_lr, backwards["lora"]
                    )
                    if backwards["lora"] and not applied:
                        nonfinite += 1
            self.position = self.sampler.advance(self.position)
            self.micro_step += 1

        self._count_nonfinite(nonfinite)
        means = acc.reduce(sums / config.gradient_accumulation_steps, reduction="mean").tolist()
        record = {
            "loss/vsd": means[0],
            "loss/kl": means[1],
            "loss/lora": means[2],
            "loss/student": means[0] + means[1] + means[3],
            **norms,
            "lr/student": self.student_lr.get_last_lr()[0],
            "lr/lora": self.lora_lr.get_last_lr()[0],
            "nonfinite/total": float(self.nonfinite_total),
            "epoch": float(self.position.epoch),
        }
        if self.clip is not None:
            record["loss/clip"] = means[3]
        return record

    def _micro_step(self) -> tuple[torch.Tensor, dict[str, bool]]:
        """Forward and backward of one micro-batch: (the loss values, which losses were finite)."""
        config = self.config
        indices, first_sample = self.sampler.batch(self.position)
        draws = draw_step(
            seed=config.seed,
            micro_step=self.micro_step,
            first_sample=first_sample,
            batch_size=self.batch_size,
            latent_shape=self.latent_shape,
            vsd_timestep_range=(config.vsd_min_timestep, config.vsd_max_timestep),
            num_train_timesteps=self.scheduler.config.num_train_timesteps,
            null_prompt_probability=config.lora_null_prompt_probability,
        ).to(self.device)
        captions = [self.captions[i] for i in indices]
        text = self._encode(captions)
        clip_text = self.clip.text_features(captions) if self.clip is not None else None

        # The student first: its graph is freed by its backward before the LoRA pass.
        result = self.step_fn.student_losses(text, draws, clip_text)
        finite = {"student": self._all_finite(result.loss)}
        if finite["student"]:
            self.accelerator.backward(result.loss)
        loss_lora = self.step_fn.lora_loss(result.x0, text, draws)
        finite["lora"] = self._all_finite(loss_lora)
        if finite["lora"]:
            self.accelerator.backward(loss_lora)
        values = [result.loss_vsd, result.loss_kl, loss_lora, result.loss_clip.to(self.device)]
        return torch.stack([v.detach().float() for v in values]), finite

    def _apply(self, params, optimizer, lr_scheduler, backwards: int) -> tuple[bool, float]:
        """Clip and step unless nothing was backpropagated or the norm is not finite."""
        norm = float("nan")
        applied = False
        if backwards:
            norm = float(self.accelerator.clip_grad_norm_(params, self.config.max_grad_norm))
            if math.isfinite(norm):
                optimizer.step()
                lr_scheduler.step()
                applied = True
        optimizer.zero_grad(set_to_none=True)
        return applied, norm

    def _count_nonfinite(self, events: int) -> None:
        self.nonfinite_total += events
        self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if events else 0
        if self.consecutive_nonfinite >= self.config.max_consecutive_nonfinite:
            where = self.last_checkpoint or "none written yet"
            raise NonFiniteLossError(
                f"{flag_name('max_consecutive_nonfinite')}: {self.consecutive_nonfinite} consecutive steps had a "
                f"non-finite loss or gradient norm (limit {self.config.max_consecutive_nonfinite}); stopped at "
                f"step {self.step + 1}. Last good checkpoint: {where}"
            )

    def _all_finite(self, value: torch.Tensor) -> bool:
        """True on every process or on none: a skipped backward must be skipped everywhere."""
        flag = torch.isfinite(value.detach()).all().float().reshape(1)
        if self.accelerator.num_processes > 1:
            flag = self.accelerator.reduce(flag, reduction="sum") / self.accelerator.num_processes
        return bool(flag.item() == 1.0)

    def _any_process(self, condition: bool) -> bool:
        if self.accelerator.num_processes == 1:
            return condition
        flag = torch.tensor([float(condition)], device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)

    # -- checkpoints ---------------------------------------------------------------------

    def _state(self) -> dict:
        return {
            "step": self.step,
            "micro_step": self.micro_step,
            "epoch": self.position.epoch,
            "batch_in_epoch": self.position.batch,
            "ema_updates": self.ema.num_updates,
            "consecutive_nonfinite": self.consecutive_nonfinite,
            "nonfinite_total": self.nonfinite_total,
            "num_processes": self.accelerator.num_processes,
            "batch_size": self.batch_size,
            "num_captions": len(self.captions),
            "history": self.history.records,
            "config": self.config.to_dict(),
        }

    def save_checkpoint(self) -> Path:
        from accelerate.utils import gather_object

        acc = self.accelerator
        rng = gather_object([ckpt.rng_state()])  # every rank's
        path = self.checkpoint_dir / ckpt.checkpoint_name(self.step)
        if acc.is_main_process:
            optimizers = {
                "student": self.student_optimizer.state_dict(),
                "lora": self.lora_optimizer.state_dict(),
                "student_lr": self.student_lr.state_dict(),
                "lora_lr": self.lora_lr.state_dict(),
            }
            if acc.scaler is not None:
                optimizers["scaler"] = acc.scaler.state_dict()
            contents = ckpt.CheckpointContents(
                student=self.student_unet.state_dict(),
                ema=self.ema.state_dict(),
                lora=lora_state_dict(self.fake_score_unet),
                optimizers=optimizers,
                rng=rng,
                state=self._state(),
            )
            ckpt.write_checkpoint(self.checkpoint_dir, self.step, contents)
            ckpt.prune_checkpoints(self.checkpoint_dir, self.config.keep_checkpoints)
        acc.wait_for_everyone()
        self.last_checkpoint = path
        return path

    def _resume(self, resume: str) -> None:
        path = ckpt.find_checkpoint(resume, self.checkpoint_dir)
        if path is None:
            if self.accelerator.is_main_process:
                _log.warning("--resume latest: no checkpoint under %s yet; starting fresh", self.checkpoint_dir)
            return
        contents = ckpt.read_checkpoint(path)
        state = contents.state
        for key, now in (("num_processes", self.accelerator.num_processes), ("batch_size", self.batch_size),
                         ("num_captions", len(self.captions))):
            if state[key] != now:
                raise ValueError(
                    f"{flag_name('resume')}: {path} was written with {key}={state[key]}, this run has {now}; "
                    "resuming would change the data order (use the same captions, batch size and process count)"
                )
        self.student_unet.load_state_dict(contents.student, strict=True)
        self.ema.load_state_dict(contents.ema, state["ema_updates"])
        load_lora_state_dict(self.fake_score_unet, contents.lora)
        self.student_optimizer.load_state_dict(contents.optimizers["student"])
        self.lora_optimizer.load_state_dict(contents.optimizers["lora"])
        self.student_lr.load_state_dict(contents.optimizers["student_lr"])
        self.lora_lr.load_state_dict(contents.optimizers["lora_lr"])
        if self.accelerator.scaler is not None and "scaler" in contents.optimizers:
            self.accelerator.scaler.load_state_dict(contents.optimizers["scaler"])
        self.step = state["step"]
        self.micro_step = state["micro_step"]
        self.position = SamplerPosition(state["epoch"], state["batch_in_epoch"])
        self.consecutive_nonfinite = state["consecutive_nonfinite"]
        self.nonfinite_total = state["nonfinite_total"]
        self.history = LossHistory(state["history"])
        self._rng_to_restore = contents.rng[self.accelerator.process_index]
        self.last_checkpoint = path

    # -- validation and the end of the run -------------------------------------------------

    def validate(self) -> Path | None:
        """Write a grid sampled from the EMA student (main process; the others wait)."""
        path = self._write_validation_grid() if self.accelerator.is_main_process else None
        self.accelerator.wait_for_everyone()
        return path

    def _write_validation_grid(self) -> Path | None:
        if self.validation_text is None:
            return None
        from tiue.files import atomic_path
        from tiue.train.previews import render_validation_grid

        grid = render_validation_grid(
            student_unet=self.student_unet, ema=self.ema, vae=self.vae, text_encoder=self.text_encoder,
            tokenizer=self.tokenizer, scheduler=self.scheduler, prompt_embeds=self.validation_text,
            num_steps=self.config.num_steps, resolution=self.resolution, seed=self.config.seed,
        )
        path = self.output_dir / "validation" / f"step-{self.step:08d}.png"
        with atomic_path(path, suffix=".png") as tmp:
            grid.save(tmp, format="PNG")
        if self.report_to == "tensorboard":
            import numpy as np

            tracker = self.accelerator.get_tracker("tensorboard")
            tracker.log_images({"validation": np.asarray(grid)[None]}, step=self.step, dataformats="NHWC")
        return path

    def _finish(self) -> Path:
        from tiue.train.export import export_final

        acc = self.accelerator
        final = self.output_dir / "final"
        if acc.is_main_process:
            if not self.config.validate_every or self.step % self.config.validate_every:
                self._write_validation_grid()
            plot_loss_curve(self.history, self.output_dir / "loss_curve.png")
            export_final(
                final,
                teacher=self.config.teacher,
                student_unet=self.student_unet,
                ema=self.ema,
                fake_score_unet=self.fake_score_unet,
                scheduler=self.scheduler,
                summary={"step": self.step, "config": self.config.to_dict(), "nonfinite_total": self.nonfinite_total},
            )
        acc.wait_for_everyone()
        return final


def _tracker_config(config: TrainConfig) -> dict:
    """Hyper-parameters as TensorBoard accepts them (numbers, strings, bools)."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()}
