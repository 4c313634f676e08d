"""Trainer(config).fit(): distil a Stable Diffusion teacher into a TiUE student.

The trainer owns the run's state and its loop: data position, optimizer steps, EMA and the
checks on every step. What it builds before the first step is tiue.train.setup, the losses
tiue.train.step (formulas in tiue.train.losses), the joint optimizer step
tiue.train.optimization, checkpoints tiue.train.checkpoint, the final folder
tiue.train.export (uploaded by --push-to-hub) and validation grids tiue.train.previews.

Distribution, mixed precision and gradient accumulation go through accelerate: DDP across
processes (gloo on CPU), `accelerate launch` and `torchrun` alike. Only the models are
prepared by accelerate; the optimizers stay plain so that one loss scaler drives both (see
tiue.train.optimization).
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tiue.files import check_writable_folder
from tiue.train import checkpoint as ckpt
from tiue.train.config import TrainConfig, flag_name
from tiue.train.data import CaptionSampler, SamplerPosition, load_captions
from tiue.train.ema import EMA
from tiue.train.folder_lock import FolderLock
from tiue.train.monitoring import HISTORY_FILE, HistoryFile, LossHistory, format_losses
from tiue.train.optimization import ModelUpdate, apply_updates
from tiue.train.randomness import draw_step
from tiue.train.setup import (
    build_models, build_optimizers, check_optional_packages, load_options, make_accelerator, mixed_dtype,
    prepare_hub_repo,
)
from tiue.train.signals import StopRequest
from tiue.train.step import DistillationStep, StepLosses

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError"]

_log = logging.getLogger("tiue.train")


class NonFiniteLossError(ValueError):
    """Too many consecutive steps had a non-finite loss (or, with no loss scaler, gradient norm)."""


@dataclass
class TrainResult:
    step: int
    stopped_early: bool  # a signal asked the run to stop
    checkpoint: Path | None
    final: Path | None
    hub_repo: str | None = None  # where --push-to-hub uploaded final/


class Trainer:
    """A distillation run. Everything that can be checked is checked before any compute.

    hub: for --push-to-hub, an object with huggingface_hub.HfApi's create_repo and
    upload_folder (default: HfApi(token=--hub-token)); a stand-in lets a test push offline.
    """

    def __init__(self, config: TrainConfig, hub=None):
        config.check()
        check_optional_packages(config)
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        check_writable_folder(flag_name("output_dir"), self.output_dir)
        self.captions = load_captions(config.captions, config.caption_field)
        self.accelerator, self.report_to = make_accelerator(config, self.output_dir)
        self._lock = self._lock_output_dir()
        try:
            self._build(hub)
        except BaseException:
            if self._lock is not None:
                self._lock.discard()
            raise

    def _build(self, hub) -> None:
        config = self.config
        acc = self.accelerator
        # The Hub first: a push that cannot happen stops the run before --overwrite deletes anything.
        self.hub, self.hub_repo = prepare_hub_repo(config, acc, hub) if config.push_to_hub else (None, None)
        ckpt.claim_output_dir(self.output_dir, config, acc)
        self.device = acc.device
        self.batch_size = config.per_process_batch_size(acc.num_processes)
        self.sampler = CaptionSampler(
            len(self.captions), self.batch_size, acc.num_processes, acc.process_index, config.seed
        )
        self.max_steps = config.max_steps or max(
            1, config.epochs * self.sampler.batches_per_epoch // config.gradient_accumulation_steps
        )
        from accelerate.utils import set_seed

        set_seed(config.seed)
        self.models = models = build_models(config, self.device, self.weight_dtype)
        self.tokenizer, self.text_encoder, self.vae = models.tokenizer, models.text_encoder, models.vae
        self.scheduler, self.resolution, self.latent_shape = models.scheduler, models.resolution, models.latent_shape
        self.fake_score_unet, self.student_unet, self.lora_params = models.fake_score_unet, models.student_unet, models.lora_params
        self.student_optimizer, self.lora_optimizer, self.student_lr, self.lora_lr = build_optimizers(
            config, models, self.max_steps
        )
        self._prepare()

        self.step = 0
        self.micro_step = 0
        self.position = SamplerPosition()
        self.history = LossHistory()
        self.history_file = HistoryFile(self.output_dir / HISTORY_FILE)  # written by the main process
        self.setting_changes: list[dict] = []  # what resumes with --allow-setting-changes changed
        self.consecutive_nonfinite = 0
        self.nonfinite_total = 0
        self.overflow_total = 0  # fp16 steps the loss scaler skipped
        self.last_checkpoint: Path | None = None
        self._rng_to_restore: dict | None = None
        if config.resume:
            ckpt.resume_run(self, config.resume)
            for schedule in (self.student_lr, self.lora_lr):
                _apply_schedule(schedule)
        if self.step == 0 and acc.is_main_process:  # a fresh start: lines of an earlier attempt are void
            self.history_file.mark_resume(0)

    # -- setup ---------------------------------------------------------------------------

    def _lock_output_dir(self) -> FolderLock | None:
        """The main process locks --output-dir for the run's life; every process fails alike if it
        is taken (FolderLock: a second trainer on the folder is refused, a dead one's lock is gone)."""
        acc = self.accelerator
        lock, error = None, None
        if acc.is_main_process:
            try:
                lock = FolderLock(self.output_dir, flag_name("output_dir"))
            except ValueError as caught:
                error = str(caught)
        if acc.num_processes > 1:
            from accelerate.utils import broadcast_object_list

            (error,) = broadcast_object_list([error])
        if error is not None:
            raise ValueError(error)
        return lock

    def close(self) -> None:
        """Release --output-dir (fit() does when it ends; a Trainer never fit holds it until then)."""
        if getattr(self, "_lock", None) is not None:
            self._lock.release()

    @property
    def weight_dtype(self) -> torch.dtype:
        return mixed_dtype(self.accelerator.mixed_precision)

    @property
    def grad_scaler(self):
        """fp16's loss scaler (None otherwise): scales both backwards, unscaled once per model."""
        return self.accelerator.scaler

    def _prepare(self) -> None:
        acc = self.accelerator
        self.student_model, self.fake_score_model = acc.prepare(self.models.student, self.fake_score_unet)
        self.ema = EMA(self.student_unet, self.config.ema_decay)
        self.prompt_encoder = self.models.prompt_encoder(self.device)
        self.null_text = self.prompt_encoder.null()  # once per run
        self.clip = None
        if self.config.clip_model:
            from tiue.train.clip_alignment import ClipAlignment

            self.clip = ClipAlignment(self.config.clip_model, self.device, self.weight_dtype)
        self.validation_text = self._encode(list(self.config.validation_prompts)) if self.config.validation_prompts else None
        try:
            self.step_fn = DistillationStep.from_config(
                self.config, student=self.student_model, fake_score=self.fake_score_model,
                fake_score_unwrapped=self.fake_score_unet, scheduler=self.scheduler, null_text=self.null_text,
                device=self.device, batch_size=self.batch_size, clip=self.clip, vae=self.vae, autocast=acc.autocast,
            )
        except ValueError as error:  # K is checked where the loop-free coefficients are made
            raise ValueError(f"{flag_name('num_steps')}: {error}") from None
        self.updates = [
            ModelUpdate("student", list(self.student_model.parameters()), self.student_optimizer, self.student_lr),
            ModelUpdate("lora", self.lora_params, self.lora_optimizer, self.lora_lr),
        ]

    def _encode(self, prompts: list[str]):
        """The Conditioning of a batch of prompts (text embeddings, and SDXL's added conditions)."""
        return self.prompt_encoder(prompts)

    # -- the loop ------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        try:
            with tf32_matmuls(self.config.allow_tf32):
                result = self._fit()
            if result.final is not None and self.hub_repo is not None and self.accelerator.is_main_process:
                self._push_final(result.final)
                result.hub_repo = self.hub_repo
        finally:
            self.close()
        return result

    def _fit(self) -> TrainResult:
        acc = self.accelerator
        config = self.config
        if acc.is_main_process:
            ckpt.remove_stale_temporaries(self.checkpoint_dir)
            if self.report_to != "none":
                acc.init_trackers("tiue-train", config=_tracker_config(config), init_kwargs=self._tracker_options())
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
                if acc.is_main_process:
                    self.history_file.append({"step": self.step, **record})
                if self.step % config.log_every == 0 and self.report_to != "none":
                    acc.log(record, step=self.step)
                progress.update(1)
                progress.set_postfix(format_losses(record), refresh=False)
                if config.validate_every and self.step % config.validate_every == 0:
                    self.write_previews()
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

    def _tracker_options(self) -> dict:
        # wandb's files go with the run's other logs, unless WANDB_DIR says otherwise.
        if self.report_to == "wandb" and "WANDB_DIR" not in os.environ:
            return {"wandb": {"dir": str(self.output_dir)}}
        return {}

    def _optimizer_step(self) -> dict[str, float]:
        """gradient_accumulation_steps micro-steps, then one joint step of both models."""
        acc = self.accelerator
        config = self.config
        totals = StepLosses()
        all_finite = True
        update = None
        for _ in range(config.gradient_accumulation_steps):
            with acc.accumulate(self.student_model, self.fake_score_model):
                losses, finite = self._micro_step()
                totals = totals + losses
                all_finite = all_finite and finite
                if acc.sync_gradients:
                    update = apply_updates(self.updates, self.grad_scaler, config.max_grad_norm, skip=not all_finite)
                    if update.applied:
                        self.ema.update(self.student_unet)
            self.position = self.sampler.advance(self.position)
            self.micro_step += 1

        if update.overflow:  # the scaler's business: it lowered the scale, the next step tries again
            self.overflow_total += 1
        else:
            self._count_nonfinite(not update.applied)
        mean = totals.scaled(1.0 / config.gradient_accumulation_steps).as_tensor(self.device)
        means = StepLosses.from_tensor(acc.reduce(mean, reduction="mean"))
        record = {
            "loss/vsd": means.vsd,
            "loss/kl": means.kl,
            "loss/lora": means.lora,
            "loss/student": means.student,
            "grad_norm/student": update.grad_norms["student"],
            "grad_norm/lora": update.grad_norms["lora"],
            "lr/student": self.student_lr.get_last_lr()[0],
            "lr/lora": self.lora_lr.get_last_lr()[0],
            "nonfinite/total": float(self.nonfinite_total),
            "epoch": float(self.position.epoch),
        }
        if self.grad_scaler is not None:
            record["loss_scale"] = float(self.grad_scaler.get_scale())
            record["overflow/total"] = float(self.overflow_total)
        if self.clip is not None:
            record["loss/clip"] = means.clip
        return record

    def _micro_step(self) -> tuple[StepLosses, bool]:
        """Forward and backward of one micro-batch: (its losses, whether both were finite).

        Update order (as the official script): the student's loss and backward first; then the
        LoRA loss on the student's x0 from BEFORE the student's update, detached. A non-finite
        loss gets no backward, and the joint step then changes neither model.
        """
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
            null_prompt_scope=config.lora_null_prompt_scope,
        ).to(self.device)
        captions = [self.captions[i] for i in indices]
        text = self._encode(captions)
        clip_text = self.clip.text_features(captions) if self.clip is not None else None

        # The student first: its graph is freed by its backward before the LoRA pass.
        result = self.step_fn.student_losses(text, draws, clip_text)
        student_finite = self._all_finite(result.loss)
        if student_finite:
            self.accelerator.backward(result.loss)
        loss_lora = self.step_fn.lora_loss(result.x0, text, draws)
        lora_finite = self._all_finite(loss_lora)
        if lora_finite:
            self.accelerator.backward(loss_lora)
        losses = StepLosses(
            vsd=result.loss_vsd.item(), kl=result.loss_kl.item(), lora=loss_lora.item(), clip=float(result.loss_clip)
        )
        return losses, student_finite and lora_finite

    def _count_nonfinite(self, skipped: bool) -> None:
        self.nonfinite_total += int(skipped)
        self.consecutive_nonfinite = self.consecutive_nonfinite + 1 if skipped else 0
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

    # -- checkpoints, validation and the end of the run ------------------------------------

    def save_checkpoint(self) -> Path:
        self.last_checkpoint = ckpt.save_run(self)
        return self.last_checkpoint

    def write_previews(self) -> Path | None:
        """Write a grid sampled from the EMA student (main process; the others wait)."""
        from tiue.train.previews import write_validation_grid

        path = write_validation_grid(self) if self.accelerator.is_main_process else None
        self.accelerator.wait_for_everyone()
        return path

    def _finish(self) -> Path:
        from tiue.train.export import export_final
        from tiue.train.monitoring import plot_loss_curve
        from tiue.train.previews import write_validation_grid

        acc = self.accelerator
        final = self.output_dir / "final"
        if acc.is_main_process:
            if not self.config.validate_every or self.step % self.config.validate_every:
                write_validation_grid(self)
            plot_loss_curve(self.history, self.output_dir / "loss_curve.png")
            export_final(
                final,
                teacher=self.config.teacher,
                student_unet=self.student_unet,
                ema=self.ema,
                fake_score_unet=self.fake_score_unet,
                scheduler=self.scheduler,
                summary={
                    "step": self.step, "config": self.config.to_dict(), "nonfinite_total": self.nonfinite_total,
                    "overflow_total": self.overflow_total, "setting_changes": self.setting_changes,
                },
                **load_options(self.config),  # the teacher's text encoder and VAE as the run loaded them
            )
        acc.wait_for_everyone()
        return final

    def _push_final(self, final: Path) -> None:
        """Upload final/ to the repo created at start-up (main process, after the trackers end)."""
        try:
            self.hub.upload_folder(
                repo_id=self.hub_repo, folder_path=str(final),
                commit_message=f"tiue train: final pipeline, step {self.step}",
            )
        except Exception as error:  # the run is done; say how to finish the upload by hand
            raise OSError(
                f"{flag_name('push_to_hub')}: uploading {final} to {self.hub_repo} failed ({type(error).__name__}: "
                f"{str(error).splitlines()[0] if str(error) else ''}); the pipeline is complete on disk: "
                f"hf upload {self.hub_repo} {final} ."
            ) from error
        _log.info("pushed %s to the Hub repo %s", final, self.hub_repo)


def _apply_schedule(schedule) -> None:
    """The optimizer's lr as `schedule` gives it at the step it has reached. A checkpoint holds the
    lr of its own run's schedule; a run resumed with another --max-steps (a decaying schedule's
    end) must continue on its own, from its first step on."""
    for group, base, factor in zip(schedule.optimizer.param_groups, schedule.base_lrs, schedule.lr_lambdas):
        group["lr"] = base * factor(schedule.last_epoch)


@contextmanager
def tf32_matmuls(allow: bool):
    """--allow-tf32 (matmuls and cuDNN convolutions; only Ampere and newer GPUs have TF32) while
    the run computes; the process's own settings come back afterwards."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _tracker_config(config: TrainConfig) -> dict:
    """Hyper-parameters as the trackers accept them (numbers, strings, bools); no --hub-token."""
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in config.to_dict().items()}
