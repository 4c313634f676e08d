"""One distillation training step: this trainer vs a re-creation of the paper code's step.

    python -m pytest benchmarks/test_train_step.py -q -s                 # CPU, small scale
    TIUE_TRAIN_BENCH_SCALE=sd21 TIUE_TRAIN_BENCH_PRECISION=bf16 TIUE_TRAIN_BENCH_BATCH=8 \
        python -m pytest benchmarks/test_train_step.py -q -s             # GPU, SD2.1-base shapes

Both steps run on the same models (random weights; latency does not depend on their values)
and the same batch sizes, and do the same work: the student's loop-free forward and
backward, the teacher and fake-score (LoRA) predictions with CFG, the LoRA forward and
backward, both clipped Adam steps and the EMA update.

- "tiue": `Trainer._optimizer_step()` itself: text encoder once per batch, null prompt once
  per run, the four VSD predictions in ONE pass (per-sample adapters), no K-fold copies of
  decoder inputs, the KL as one op, the frozen teacher in fp32 as the official script keeps it
  (TIUE_TRAIN_BENCH_HALF_TEACHER=1: in the mixed-precision dtype).
- "paper": the public code's way: captions encoded one at a time (and the null prompt every
  step), four separate teacher passes toggling the adapter, decoder inputs copied K times
  with `.repeat`, z_0 and the KL as Python loops, the frozen teacher in fp32.

Settings (environment): TIUE_TRAIN_BENCH_SCALE small|sd21, _BATCH, _RESOLUTION, _NUM_STEPS,
_PRECISION no|bf16|fp16, _ROUNDS, _WARMUP, _GRADIENT_CHECKPOINTING 0|1, _HALF_TEACHER 0|1, _RESULTS_DIR,
_EXTRA_RESULTS_DIR. The two steps alternate within each timed round (pytest-benchmark's own
statistics are per round, i.e. one step of each); the table reports each step's median.
Results: <results>/train-step-<device>-<scale>.{json,md}. Speed is reported, never asserted.
"""

from __future__ import annotations

import copy
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the e2e package beside this file

ROOT = Path(__file__).resolve().parents[1]


# -- settings -------------------------------------------------------------------------------


@dataclass
class Settings:
    scale: str = "small"
    batch: int = 2
    resolution: int = 32
    num_steps: int = 4
    precision: str = "no"
    rounds: int = 3
    warmup: int = 1
    gradient_checkpointing: bool = False
    half_precision_teacher: bool = False
    results_dir: Path = ROOT / "benchmarks" / "results"
    extra_results_dir: Path | None = None

    @classmethod
    def from_env(cls) -> "Settings":
        env = os.environ.get
        scale = env("TIUE_TRAIN_BENCH_SCALE", "small")
        if scale not in ("small", "sd21"):
            raise ValueError(f"TIUE_TRAIN_BENCH_SCALE: expected small or sd21, got {scale!r}")
        gpu = torch.cuda.is_available()
        extra = env("TIUE_TRAIN_BENCH_EXTRA_RESULTS_DIR")
        return cls(
            scale=scale,
            batch=int(env("TIUE_TRAIN_BENCH_BATCH", 8 if gpu else 2)),
            resolution=int(env("TIUE_TRAIN_BENCH_RESOLUTION", 512 if scale == "sd21" else 32)),
            num_steps=int(env("TIUE_TRAIN_BENCH_NUM_STEPS", 4)),
            precision=env("TIUE_TRAIN_BENCH_PRECISION", "bf16" if gpu else "no"),
            rounds=int(env("TIUE_TRAIN_BENCH_ROUNDS", 10 if gpu else 5)),
            warmup=int(env("TIUE_TRAIN_BENCH_WARMUP", 3 if gpu else 1)),
            gradient_checkpointing=env("TIUE_TRAIN_BENCH_GRADIENT_CHECKPOINTING", "0") == "1",
            half_precision_teacher=env("TIUE_TRAIN_BENCH_HALF_TEACHER", "0") == "1",
            results_dir=Path(env("TIUE_TRAIN_BENCH_RESULTS_DIR", str(cls.results_dir))),
            extra_results_dir=Path(extra) if extra else None,
        )


# -- models ---------------------------------------------------------------------------------


def save_teacher(directory: Path, scale: str) -> Path:
    """A Stable Diffusion pipeline folder with random weights at the given scale."""
    from tiue.testing.tiny import save_tiny_pipeline

    if scale == "small":
        return save_tiny_pipeline(directory, unet_size="small")
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from e2e.models import SD21_TEXT_ENCODER_CONFIG, SD21_UNET_CONFIG, SD21_VAE_CONFIG
    from transformers import CLIPTextConfig, CLIPTextModel

    from tiue.testing.tiny import SD21_SCHEDULER_CONFIG, build_tokenizer

    tokenizer = build_tokenizer(directory.parent / f".{directory.name}-tokenizer")
    text_config = CLIPTextConfig(
        **SD21_TEXT_ENCODER_CONFIG, bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1,
        pad_token_id=len(tokenizer) - 1,
    )
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL(**SD21_VAE_CONFIG),
        text_encoder=CLIPTextModel(text_config),
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD21_UNET_CONFIG),
        scheduler=PNDMScheduler.from_config(SD21_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.bfloat16)  # halves the folder; the trainer casts to its own dtypes
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory


def make_trainer(settings: Settings, teacher: Path, output: Path):
    from tiue.train import TrainConfig, Trainer

    captions = output.parent / "captions.txt"
    captions.write_text("\n".join(f"benchmark caption number {i}, a detailed scene" for i in range(4096)))
    config = TrainConfig(
        teacher=str(teacher), captions=str(captions), output_dir=str(output), batch_size=settings.batch,
        num_steps=settings.num_steps, resolution=settings.resolution, mixed_precision=settings.precision,
        gradient_checkpointing=settings.gradient_checkpointing, report_to="none", max_steps=10**6,
        half_precision_teacher=settings.half_precision_teacher,
        validation_prompts=(),
    )
    return Trainer(config)


# -- the paper-style step ---------------------------------------------------------------------


class PaperStyleStep:
    """The public code's step on the trainer's models (see the module docstring)."""

    def __init__(self, trainer):
        from diffusers.models.attention_processor import AttnProcessor2_0

        from tiue.unet import TiUEUNet

        self.trainer = trainer
        self.device = trainer.device
        self.autocast_dtype = trainer.weight_dtype
        self.student_unet = trainer.student_unet
        # The public code runs diffusers' own attention everywhere; the trainer's shared-text
        # processors are swapped out for the paper step only (see __call__).
        self.cross_attention = [
            m for m in self.student_unet.up_blocks.modules() if getattr(m, "is_cross_attention", False)
        ]
        self.stock_processor = AttnProcessor2_0()
        self.encoder = TiUEUNet(self.student_unet, shared_text_attention=False)
        if trainer.fake_score_unet.dtype != torch.float32:
            # The public code keeps its frozen teacher in fp32 (--half-precision-teacher does not): a separate fp32 copy.
            self.teacher = copy.deepcopy(trainer.fake_score_unet).to(torch.float32)
            lora = [p for n, p in self.teacher.named_parameters() if ".fake_score." in n]
            self.lora_optimizer = torch.optim.Adam(lora, lr=trainer.config.learning_rate_lora)
        else:
            self.teacher = trainer.fake_score_unet
            self.lora_optimizer = trainer.lora_optimizer
        self.lora_params = [p for n, p in self.teacher.named_parameters() if ".fake_score." in n]
        self.student_optimizer = trainer.student_optimizer
        self.timesteps = trainer.step_fn.timesteps
        self.coeffs = trainer.step_fn.coeffs.tolist()
        self.scheduler = trainer.scheduler
        self.alphas = trainer.step_fn.alphas_cumprod

    def autocast(self):
        enabled = self.autocast_dtype != torch.float32
        return torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled)

    def encode_one_by_one(self, captions: list[str]) -> torch.Tensor:
        return torch.cat([self.trainer._encode([caption]).text for caption in captions])

    def student_outputs(self, z: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        unet, k, batch = self.student_unet, len(self.timesteps), z.shape[0]
        features = self.encoder.encode(z, self.timesteps[0], text)
        hidden = features.mid.repeat(k, 1, 1, 1)
        skips = [s.repeat(k, 1, 1, 1) for s in features.skips]  # every decoder input, K times
        text_k = text.repeat(k, 1, 1)
        emb = self.encoder.time_embedding(self.timesteps, hidden.dtype).repeat_interleave(batch, 0)
        for block in unet.up_blocks:
            n = len(block.resnets)
            res, skips = tuple(skips[-n:]), skips[:-n]
            kwargs = dict(encoder_hidden_states=text_k) if getattr(block, "has_cross_attention", False) else {}
            hidden = block(hidden_states=hidden, temb=emb, res_hidden_states_tuple=res, **kwargs)
        hidden = unet.conv_out(unet.conv_act(unet.conv_norm_out(hidden)))
        return hidden.reshape(k, batch, *hidden.shape[1:])

    def teacher_eps(self, noisy, t, text, null, adapter: bool) -> torch.Tensor:
        (self.teacher.enable_adapters if adapter else self.teacher.disable_adapters)()
        cond = self.teacher(noisy, t, text).sample.float()
        uncond = self.teacher(noisy, t, null).sample.float()
        guided = uncond + self.trainer.config.guidance_scale * (cond - uncond)
        alpha = self.alphas[t].reshape(-1, 1, 1, 1)
        if self.scheduler.config.prediction_type == "v_prediction":
            guided = alpha.sqrt() * guided + (1 - alpha).sqrt() * noisy
        return guided

    def __call__(self) -> None:
        trainer_processors = [m.processor for m in self.cross_attention]
        for m in self.cross_attention:
            m.processor = self.stock_processor
        try:
            self.step()
        finally:
            for m, processor in zip(self.cross_attention, trainer_processors):
                m.processor = processor

    def only_this_teacher_on_device(self, which: str):
        """For memory measurements: keep only `which` ("tiue" or "paper") teacher resident."""
        if self.teacher is self.trainer.fake_score_unet:
            return
        keep, away = (self.trainer.fake_score_unet, self.teacher) if which == "tiue" else (
            self.teacher, self.trainer.fake_score_unet)
        away.to("cpu")
        keep.to(self.device)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def step(self) -> None:
        from tiue.train.randomness import draw_step

        trainer, config = self.trainer, self.trainer.config
        indices, first = trainer.sampler.batch(trainer.position)
        draws = draw_step(
            seed=config.seed, micro_step=trainer.micro_step, first_sample=first, batch_size=trainer.batch_size,
            latent_shape=trainer.latent_shape, vsd_timestep_range=(config.vsd_min_timestep, config.vsd_max_timestep),
            num_train_timesteps=1000, null_prompt_probability=config.lora_null_prompt_probability,
        ).to(self.device)
        with torch.no_grad():
            text = self.encode_one_by_one([trainer.captions[i] for i in indices])
            null = self.encode_one_by_one([""] * len(indices))
        with self.autocast():
            outputs = self.student_outputs(draws.initial_noise, text)
            x0 = self.coeffs[0] * draws.initial_noise
            for k in range(len(self.timesteps)):
                x0 = x0 + self.coeffs[k + 1] * outputs[k].float()
            loss_kl = 0.0
            for sample in outputs.reshape(-1, *outputs.shape[2:]).float():
                mean, var = sample.mean(), sample.var()
                loss_kl = loss_kl - 0.5 * (1 + var.log() - mean**2 - var)
            loss_kl = config.lambda_kl * loss_kl
            with torch.no_grad():
                t = draws.vsd_timesteps
                noisy = self.scheduler.add_noise(x0.detach(), draws.vsd_noise, t)
                eps_teacher = self.teacher_eps(noisy, t, text, null, adapter=False)
                eps_lora = self.teacher_eps(noisy, t, text, null, adapter=True)
                alpha = self.alphas[t].reshape(-1, 1, 1, 1)
                grad = torch.nan_to_num((1 - alpha) * (eps_teacher - eps_lora))
            loss_vsd = 0.5 * torch.nn.functional.mse_loss(x0, (x0 - grad).detach())
        (loss_vsd + loss_kl).backward()
        torch.nn.utils.clip_grad_norm_(self.student_unet.parameters(), config.max_grad_norm)
        self.student_optimizer.step()
        self.student_optimizer.zero_grad(set_to_none=True)
        trainer.ema.update(self.student_unet)

        with self.autocast():
            t = draws.lora_timesteps
            noisy = self.scheduler.add_noise(x0.detach(), draws.lora_noise, t)
            prompts = torch.where(draws.lora_null_prompt.reshape(-1, 1, 1), null, text)
            self.teacher.enable_adapters()
            out = self.teacher(noisy, t, prompts).sample.float()
            alpha = self.alphas[t].reshape(-1, 1, 1, 1)
            if self.scheduler.config.prediction_type == "v_prediction":
                out = alpha.sqrt() * out + (1 - alpha).sqrt() * noisy
            loss_lora = torch.nn.functional.mse_loss(alpha.sqrt() * out, alpha.sqrt() * draws.lora_noise)
        loss_lora.backward()
        torch.nn.utils.clip_grad_norm_(self.lora_params, config.max_grad_norm)
        self.lora_optimizer.step()
        self.lora_optimizer.zero_grad(set_to_none=True)
        trainer.position = trainer.sampler.advance(trainer.position)
        trainer.micro_step += 1


# -- measuring ------------------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return "CPU " + line.split(":", 1)[1].strip()
    return "CPU"


def device_slug(device: torch.device) -> str:
    name = device_name(device).lower() if device.type == "cuda" else "cpu"
    return "-".join("".join(c if c.isalnum() else " " for c in name).split())


def git_revision() -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("+dirty" if dirty else "")


def run_metadata(device: torch.device) -> dict:
    import diffusers
    import peft

    return dict(
        device_name=device_name(device), git_revision=git_revision(), torch=torch.__version__,
        diffusers=diffusers.__version__, peft=peft.__version__, cuda=torch.version.cuda,
        threads=torch.get_num_threads(), timestamp=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    )


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory(step, device: torch.device) -> dict:
    """CUDA: the allocator's peak during one step (weights, grads and optimizer state included)
    and its rise above what was resident. CPU: the peak of tensors the step allocates."""
    if device.type == "cuda":
        synchronize(device)
        resident = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
        return {"peak_bytes": peak, "step_bytes": peak - resident, "memory_counts": "allocated, weights included"}
    from tiue.testing.memory import PeakMemory

    with PeakMemory() as memory:
        step()
    return {"peak_bytes": memory.peak_bytes, "step_bytes": memory.peak_bytes,
            "memory_counts": "tensors allocated by the step, weights excluded"}


@dataclass
class Bench:
    settings: Settings
    trainer: object
    results: dict = field(default_factory=dict)

    def run(self, benchmark) -> None:
        """Time both steps in alternating rounds (so a busy machine slows both alike), then
        measure each one's peak memory with only its own teacher on the device. A step that
        runs out of GPU memory is recorded as such and the other one goes on alone."""
        device = self.trainer.device
        paper = PaperStyleStep(self.trainer)
        steps = {"tiue": self.trainer._optimizer_step, "paper": paper}
        times: dict[str, list[float]] = {name: [] for name in steps}
        out_of_memory: set[str] = set()
        rounds_done = [0]

        def one_round():
            order = list(steps) if rounds_done[0] % 2 == 0 else list(steps)[::-1]
            for name in (n for n in order if n not in out_of_memory):
                synchronize(device)
                start = time.perf_counter()
                try:
                    steps[name]()
                except torch.OutOfMemoryError:
                    out_of_memory.add(name)
                    self._drop_gradients(paper)
                    continue
                synchronize(device)
                times[name].append(time.perf_counter() - start)
            rounds_done[0] += 1

        for _ in range(self.settings.warmup):
            one_round()
        for name in times:
            times[name].clear()
        if benchmark is not None:
            benchmark.pedantic(one_round, rounds=self.settings.rounds, iterations=1, warmup_rounds=0)
        else:
            for _ in range(self.settings.rounds):
                one_round()
        for name, step in steps.items():
            if name in out_of_memory or not times[name]:
                self.results[name] = {"out_of_memory": True}
                continue
            paper.only_this_teacher_on_device(name)
            median = statistics.median(times[name])
            quartiles = statistics.quantiles(times[name], n=4) if len(times[name]) > 1 else [median] * 3
            self.results[name] = {
                "median_s": median, "q1_s": quartiles[0], "q3_s": quartiles[2], "steps_per_s": 1 / median,
                "samples_per_s": self.settings.batch / median, "rounds": len(times[name]),
                "seconds": times[name], **peak_memory(step, device),
            }
        if benchmark is not None:
            benchmark.extra_info.update(
                {f"{n}_median_s": r["median_s"] for n, r in self.results.items() if "median_s" in r}
            )

    def _drop_gradients(self, paper: "PaperStyleStep") -> None:
        for optimizer in (self.trainer.student_optimizer, self.trainer.lora_optimizer, paper.lora_optimizer):
            optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def report(self) -> tuple[dict, str]:
        meta = run_metadata(self.trainer.device)
        s = self.settings
        record = {"meta": meta, "settings": {k: str(v) for k, v in vars(s).items()}, "results": self.results}
        lines = [
            f"### One training step, tiue trainer vs paper-style ({s.scale} scale)",
            "",
            f"{meta['device_name']}, torch {meta['torch']}, git {meta['git_revision']}, {meta['timestamp']}; "
            f"batch {s.batch}, {s.resolution} px, K = {s.num_steps}, mixed precision {s.precision}, "
            f"gradient checkpointing {'on' if s.gradient_checkpointing else 'off'}; {s.rounds} timed rounds, "
            "the two steps alternating within each round.",
            "",
            "| step | median s/step (q1-q3) | steps/s | samples/s | peak memory MiB | step memory MiB |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in self.results.items():
            if "median_s" not in r:
                lines.append(f"| {name} | out of memory | | | | |")
                continue
            lines.append(
                f"| {name} | {r['median_s']:.3f} ({r['q1_s']:.3f}-{r['q3_s']:.3f}) | {r['steps_per_s']:.3f} | "
                f"{r['samples_per_s']:.2f} | {r['peak_bytes'] / 2**20:.0f} | {r['step_bytes'] / 2**20:.0f} |"
            )
        if all("median_s" in self.results.get(name, {}) for name in ("tiue", "paper")):
            speedup = self.results["paper"]["median_s"] / self.results["tiue"]["median_s"]
            memory = self.results["tiue"]["peak_bytes"] / self.results["paper"]["peak_bytes"]
            record["speedup_tiue_over_paper"] = speedup
            record["peak_memory_tiue_over_paper"] = memory
            lines += ["", f"tiue step speed-up over the paper-style step: {speedup:.2f}x; "
                          f"peak memory ratio tiue/paper: {memory:.2f} "
                          f"({next(iter(self.results.values()))['memory_counts']}). "
                          "Target (GPU, batch 8, fp16): >= 1.5x with no more memory."]
        return record, "\n".join(lines) + "\n"

    def write(self) -> list[Path]:
        record, markdown = self.report()
        stem = f"train-step-{device_slug(self.trainer.device)}-{self.settings.scale}"
        written = []
        for directory in filter(None, (self.settings.results_dir, self.settings.extra_results_dir)):
            directory.mkdir(parents=True, exist_ok=True)
            (directory / f"{stem}.json").write_text(json.dumps(record, indent=2) + "\n")
            (directory / f"{stem}.md").write_text(markdown)
            written += [directory / f"{stem}.json", directory / f"{stem}.md"]
        print("\n" + markdown + "\n".join(f"wrote {p}" for p in written))
        return written


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    settings = Settings.from_env()
    work = tmp_path_factory.mktemp("train-step")
    teacher = save_teacher(work / "teacher", settings.scale)
    state = Bench(settings, make_trainer(settings, teacher, work / "run"))
    yield state
    if state.results:
        state.write()


@pytest.fixture
def optional_benchmark(request):
    """pytest-benchmark's fixture when the plugin is installed, else None (plain timing)."""
    if request.config.pluginmanager.hasplugin("benchmark"):
        return request.getfixturevalue("benchmark")
    return None


def test_train_step_tiue_vs_paper(bench, optional_benchmark):
    bench.run(optional_benchmark)
    assert set(bench.results) == {"tiue", "paper"}
