"""The rows of the end-to-end table: what each one runs, on which copy of the models.

Every row runs the same weights. Rows that change modules in place (tiue's pipelines install
their attention processors, the fast path fuses projections and compiles) get their own copy,
so the stock rows stay stock. At the SDXL-class scales the pipelines are the SDXL ones
(StableDiffusionXLPipeline, TiUEXLPipeline) and the conditioning every row passes on carries
the added conditions (pooled text embedding, time ids).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

import torch
from diffusers import (
    DiffusionPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from tiue import TiUEPipeline, TiUEXLPipeline
from tiue.conditioning import Conditioning

from .measure import count_flops, synchronize
from .models import Models
from .paper_way import PaperWaySampler

__all__ = ["ROWS", "Row", "PreparedRow", "RowFactory", "FastPathUnavailable"]

TIUE_STEPS = 4
TEACHER_STEPS, TEACHER_GUIDANCE = 50, 7.5


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unet_only: bool = False  # True: the UNet part alone (no text encoder, no VAE)
    compiled: bool = False
    teacher: bool = False  # the 50-step CFG row, run at fewer batch sizes and rounds


ROWS = {
    row.key: row
    for row in (
        Row("a", "stock pipeline (SD or SDXL), 50 DDIM steps, CFG 7.5", teacher=True),
        Row("b", "stock pipeline (SD or SDXL), 4 DDIM steps, no CFG"),
        Row("c", "stock pipeline (SD or SDXL), 1 step, no CFG"),
        Row("c-compiled", "stock pipeline (SD or SDXL), 1 step, no CFG, UNet torch.compile'd (end to end)",
            compiled=True),
        Row("d", "paper's way: K=4 decoder inputs .repeat-ed, Python DDIM chain, eager"),
        Row("e", "tiue eager (TiUEPipeline or TiUEXLPipeline, loopfree, K=4)"),
        Row("f", "tiue fast path (enable_fast_path)", compiled=True),
        Row("b-unet", "UNet alone: 4-step DDIM loop (4 full UNet passes + scheduler.step)", unet_only=True),
        Row("c-unet", "UNet alone: one full UNet pass", unet_only=True),
        Row("c-unet-compiled", "UNet alone: one full UNet pass, torch.compile", unet_only=True, compiled=True),
        Row("d-unet", "UNet part of d: the paper's way to z_0 (decoder inputs .repeat-ed, scheduler.step chain)",
            unet_only=True),
        Row("e-unet", "UNet alone: TiUEUNet forward, encoder + 4 decoders, eager", unet_only=True),
        Row(
            "f-unet",
            "UNet part of f: fast path to z_0 (output_type='latent', text embeddings given; "
            "encoder + 4 decoders + combine)",
            unet_only=True,
            compiled=True,
        ),
    )
}


class FastPathUnavailable(RuntimeError):
    """The pipeline has no enable_fast_path yet (the fast path is being written)."""


@dataclass
class PreparedRow:
    """A row ready to time at one batch size.

    call: one timed call. flops: counts the row's work (for compiled rows, on the same
    computation run eagerly). memory_call: the call whose peak memory is measured, None where it
    cannot be on this device.
    """

    call: Callable[[], object]
    flops: Callable[[], int]
    memory_call: Callable[[], object] | None
    # The modules the row runs (its copy of the weights): its peak memory counts these, not the
    # copies other rows loaded onto the device before it.
    modules: tuple[torch.nn.Module, ...] = ()
    setup_seconds: float = 0.0
    compile_seconds: float | None = None
    capture_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


class RowFactory:
    """Builds each row's callable on the right copy of the models, once per session."""

    def __init__(self, models: Models, image_size: int, compile_mode: str | None = None,
                 fast_backend: str | None = None):
        self.models = models
        self.image_size = image_size
        self.compile_mode = compile_mode
        self.fast_backend = fast_backend  # None: enable_fast_path's own choice
        self._inputs: dict[int, tuple[list[str], torch.Tensor, Conditioning]] = {}

    # -- inputs ---------------------------------------------------------------------------

    @property
    def latent_size(self) -> int:
        return self.image_size // self.models.vae_scale_factor

    def inputs(self, batch: int) -> tuple[list[str], torch.Tensor, Conditioning]:
        """(prompts, initial noise, the UNet's conditioning) for a batch, the same for every row."""
        if batch not in self._inputs:
            prompts = [f"a photograph of object number {i}, studio light" for i in range(batch)]
            generator = torch.Generator().manual_seed(batch)
            shape = (batch, self.models.unet.config.in_channels, self.latent_size, self.latent_size)
            noise = torch.randn(shape, generator=generator).to(self.models.device, self.models.dtype)
            self._inputs[batch] = (prompts, noise, self.paper_way.encode_text(prompts))
        return self._inputs[batch]

    # -- model copies ---------------------------------------------------------------------

    @cached_property
    def stock(self) -> DiffusionPipeline:
        return _stock_pipeline(self.models)

    @cached_property
    def paper_way(self) -> PaperWaySampler:
        return PaperWaySampler(self.models, self.image_size, TIUE_STEPS)

    @cached_property
    def tiue_eager(self) -> TiUEPipeline:
        return _tiue_pipeline(self.models.copy())

    @cached_property
    def tiue_fast(self) -> tuple[TiUEPipeline, object]:
        """A TiUEPipeline (TiUEXLPipeline) with the fast path on, and its stats object."""
        pipe = _tiue_pipeline(self.models.copy())
        if not hasattr(pipe, "enable_fast_path"):
            raise FastPathUnavailable("TiUEPipeline.enable_fast_path does not exist yet")
        stats = pipe.enable_fast_path(compile=True, cuda_graphs=None, fuse_qkv=True, channels_last=True,
                                      backend=self.fast_backend)
        return pipe, getattr(pipe, "fast_path_stats", None) or stats

    def _compile_unet(self, unet: torch.nn.Module) -> torch.nn.Module:
        """The UNet, channels_last, compiled with no graph breaks. On CUDA with inductor's CUDA
        graphs, so it pays no more launch overhead than the fast path."""
        unet = unet.to(memory_format=torch.channels_last)
        mode = self.compile_mode or ("reduce-overhead" if self.models.device.type == "cuda" else None)
        return torch.compile(unet, fullgraph=True, dynamic=False, mode=mode)

    @cached_property
    def compiled_unet(self) -> torch.nn.Module:
        return self._compile_unet(self.models.copy().unet)

    @cached_property
    def compiled_stock(self) -> DiffusionPipeline:
        """The stock pipeline on its own copy of the models, its UNet compiled."""
        pipe = _stock_pipeline(self.models.copy())
        pipe.unet = self._compile_unet(pipe.unet)
        return pipe

    # -- rows -----------------------------------------------------------------------------

    def prepare(self, key: str, batch: int) -> PreparedRow:
        builders = {
            "a": self._row_a, "b": self._row_b, "c": self._row_c, "c-compiled": self._row_c_compiled,
            "d": self._row_d, "e": self._row_e,
            "f": self._row_f, "f-unet": self._row_f_unet, "b-unet": self._row_b_unet, "c-unet": self._row_c_unet,
            "c-unet-compiled": self._row_c_unet_compiled, "d-unet": self._row_d_unet, "e-unet": self._row_e_unet,
        }
        if key not in builders:
            raise ValueError(f"row: expected one of {', '.join(builders)}, got {key!r}")
        start = time.perf_counter()
        prepared = builders[key](batch)
        prepared.setup_seconds = time.perf_counter() - start
        return prepared

    def _eager(self, call: Callable[[], object], modules) -> PreparedRow:
        return PreparedRow(call=call, flops=lambda: count_flops(call), memory_call=call, modules=tuple(modules))

    def _stock_call(self, batch: int, steps: int, guidance: float, pipe=None) -> Callable[[], object]:
        prompts, noise, _ = self.inputs(batch)
        size = self.image_size
        pipe = pipe if pipe is not None else self.stock
        # guidance_scale <= 1 turns classifier-free guidance off in diffusers.
        return lambda: pipe(
            prompts, height=size, width=size, num_inference_steps=steps, guidance_scale=guidance,
            latents=noise, output_type="pt",
        ).images

    def _row_a(self, batch: int) -> PreparedRow:
        call = self._stock_call(batch, TEACHER_STEPS, TEACHER_GUIDANCE)
        one_step, two_steps = (self._stock_call(batch, n, TEACHER_GUIDANCE) for n in (1, 2))

        def flops() -> int:
            # Every step is the same work, so 1- and 2-step runs give all 50 at a fraction of the cost.
            first, second = count_flops(one_step), count_flops(two_steps)
            return first + (TEACHER_STEPS - 1) * (second - first)

        on_cuda = self.models.device.type == "cuda"
        prepared = PreparedRow(call=call, flops=flops, memory_call=call if on_cuda else two_steps,
                               modules=_pipeline_modules(self.stock))
        prepared.notes.append("FLOPs counted on 1- and 2-step runs and extended to 50 steps (each step is the same work)")
        if not on_cuda:
            prepared.notes.append("peak memory of a 2-step run (no step holds more than another)")
        return prepared

    def _row_b(self, batch: int) -> PreparedRow:
        return self._eager(self._stock_call(batch, TIUE_STEPS, 1.0), _pipeline_modules(self.stock))

    def _row_c(self, batch: int) -> PreparedRow:
        return self._eager(self._stock_call(batch, 1, 1.0), _pipeline_modules(self.stock))

    def _row_c_compiled(self, batch: int) -> PreparedRow:
        pipe = self.compiled_stock
        call = self._stock_call(batch, 1, 1.0, pipe=pipe)
        start = time.perf_counter()
        call()  # the first call compiles
        synchronize(self.models.device)
        eager = self._stock_call(batch, 1, 1.0)
        on_cuda = self.models.device.type == "cuda"
        prepared = PreparedRow(call=call, flops=lambda: count_flops(eager), memory_call=call if on_cuda else None,
                               modules=_pipeline_modules(pipe), compile_seconds=time.perf_counter() - start)
        prepared.notes.append("the stock pipeline with its UNet compiled (channels_last, fullgraph; on CUDA "
                              "inductor's CUDA graphs); text encoder and VAE eager; compile time includes the first call")
        return prepared

    def _row_d(self, batch: int) -> PreparedRow:
        prompts, noise, _ = self.inputs(batch)
        return self._eager(lambda: self.paper_way(prompts, noise), self.models.modules())

    def _row_d_unet(self, batch: int) -> PreparedRow:
        _, noise, cond = self.inputs(batch)
        return self._eager(lambda: self.paper_way.sample_latents(noise, cond), [self.models.unet])

    def _tiue_call(self, pipe: TiUEPipeline, batch: int, unet_part: bool) -> Callable[[], object]:
        prompts, noise, cond = self.inputs(batch)
        size = self.image_size
        if unet_part:
            return lambda: pipe(
                **cond.pipeline_kwargs(), latents=noise, num_inference_steps=TIUE_STEPS, height=size,
                width=size, output_type="latent",
            ).images
        return lambda: pipe(
            prompts, latents=noise, num_inference_steps=TIUE_STEPS, height=size, width=size,
            output_type="pt",
        ).images

    def _row_e(self, batch: int) -> PreparedRow:
        return self._eager(self._tiue_call(self.tiue_eager, batch, unet_part=False), _pipeline_modules(self.tiue_eager))

    def _fast_row(self, batch: int, unet_part: bool) -> PreparedRow:
        pipe, stats = self.tiue_fast
        before = _stats_seconds(stats)
        size = self.image_size
        output_type = "latent" if unet_part else "pt"
        if hasattr(pipe, "warmup"):
            pipe.warmup(batch_sizes=[batch], resolutions=[(size, size)], num_inference_steps=TIUE_STEPS,
                        output_type=output_type)
        after = _stats_seconds(stats)
        call = self._tiue_call(pipe, batch, unet_part)
        on_cuda = self.models.device.type == "cuda"
        eager_twin = self._tiue_call(self.tiue_eager, batch, unet_part)
        prepared = PreparedRow(
            call=call,
            flops=lambda: count_flops(eager_twin),
            memory_call=call if on_cuda else None,
            compile_seconds=None if after is None else after[0] - before[0],
            capture_seconds=None if after is None else after[1] - before[1],
            modules=_pipeline_modules(pipe),
        )
        prepared.notes.append("FLOPs counted on the same call to the eager pipeline")
        prepared.notes.append(f"fast-path backend: {getattr(pipe, 'fast_path_backend', None) or 'inductor'}")
        if not on_cuda:
            prepared.notes.append("peak memory not measured: compiled CPU code (inductor, OpenVINO) allocates outside ATen")
        return prepared

    def _row_f(self, batch: int) -> PreparedRow:
        return self._fast_row(batch, unet_part=False)

    def _row_f_unet(self, batch: int) -> PreparedRow:
        return self._fast_row(batch, unet_part=True)

    def _row_b_unet(self, batch: int) -> PreparedRow:
        _, noise, cond = self.inputs(batch)
        unet, scheduler = self.models.unet, self.models.ddim_scheduler()

        def loop():
            scheduler.set_timesteps(TIUE_STEPS, device=noise.device)
            latents = noise
            for t in scheduler.timesteps:
                eps = unet(latents, t, **cond.unet_kwargs(), return_dict=False)[0]
                latents = scheduler.step(eps, t, latents, eta=0.0, return_dict=False)[0]
            return latents

        return self._eager(torch.no_grad()(loop), [unet])

    def _one_step_timestep(self) -> torch.Tensor:
        scheduler = self.models.ddim_scheduler()
        scheduler.set_timesteps(1, device=self.models.device)
        return scheduler.timesteps[0]

    def _row_c_unet(self, batch: int) -> PreparedRow:
        _, noise, cond = self.inputs(batch)
        t, unet = self._one_step_timestep(), self.models.unet
        return self._eager(torch.no_grad()(lambda: unet(noise, t, **cond.unet_kwargs(), return_dict=False)[0]), [unet])

    def _row_c_unet_compiled(self, batch: int) -> PreparedRow:
        _, noise, cond = self.inputs(batch)
        t, unet = self._one_step_timestep(), self.compiled_unet
        noise_cl = noise.contiguous(memory_format=torch.channels_last)

        @torch.no_grad()
        def call():
            # Cloned: inductor's CUDA graphs reuse their output buffers on the next replay.
            return unet(noise_cl, t, **cond.unet_kwargs(), return_dict=False)[0].clone()

        start = time.perf_counter()
        call()  # the first call compiles
        synchronize(noise.device)
        compile_seconds = time.perf_counter() - start
        eager = self._row_c_unet(batch).call
        on_cuda = noise.is_cuda
        prepared = PreparedRow(
            call=call, flops=lambda: count_flops(eager), memory_call=call if on_cuda else None,
            compile_seconds=compile_seconds, capture_seconds=None, modules=(unet,),
        )
        prepared.notes.append("compile time includes inductor's CUDA-graph recording" if on_cuda else
                              "peak memory not measured: inductor's CPU code allocates outside ATen")
        return prepared

    def _row_e_unet(self, batch: int) -> PreparedRow:
        _, noise, cond = self.inputs(batch)
        pipe = self.tiue_eager
        timesteps = pipe.loopfree_schedule(TIUE_STEPS)[0].to(noise.device)
        return self._eager(torch.no_grad()(lambda: pipe.tiue_unet(noise, timesteps, **cond.unet_kwargs())), [pipe.unet])


def _stock_pipeline(models: Models) -> DiffusionPipeline:
    """diffusers' pipeline for the scale (SD or SDXL) on the stock models, DDIM scheduler."""
    if models.is_xl:
        pipe = StableDiffusionXLPipeline(**models.components(), add_watermarker=False)
    else:
        pipe = StableDiffusionPipeline(
            **models.components(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _tiue_pipeline(models: Models) -> TiUEPipeline:
    """tiue's pipeline for the scale (TiUEPipeline or TiUEXLPipeline) on these models."""
    pipe = (TiUEXLPipeline if models.is_xl else TiUEPipeline)(**models.components())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pipeline_modules(pipe) -> tuple[torch.nn.Module, ...]:
    """The torch modules among a pipeline's components (UNet, VAE, text encoders)."""
    return tuple(c for c in pipe.components.values() if isinstance(c, torch.nn.Module))


def _stats_seconds(stats) -> tuple[float, float] | None:
    """(compile_seconds, capture_seconds) of the fast path's stats object, if it has them."""
    if stats is None or not hasattr(stats, "compile_seconds"):
        return None
    return float(stats.compile_seconds), float(getattr(stats, "capture_seconds", 0.0) or 0.0)
