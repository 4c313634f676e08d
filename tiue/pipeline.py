"""TiUEPipeline: one-pass text-to-image sampling with a TiUE-distilled Stable Diffusion model."""

from __future__ import annotations

import inspect
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    UNet2DConditionModel,
)
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from tiue.arguments import check_call_arguments, check_guidance, check_positive_int, check_prompt_list
from tiue.embedded import resolve_model
from tiue.fast import FastPath, FastPathStats, load_weights_in_place
from tiue.fast.path import MAX_SIGNATURES
from tiue.files import follow_umask, write_text_atomically
from tiue.latents import vae_scale_factor
from tiue.loopfree import OnePass
from tiue.model_checks import check_finite_output, check_model_folder, check_pipeline_size
from tiue.model_card import write_model_card
from tiue.schedule import (
    TIMESTEP_SPACINGS,
    as_ddim_scheduler,
    ddim_timesteps,
    loopfree_coefficients,
)
from tiue.text import encode_prompt_embeddings
from tiue.unet import TiUEUNet

_log = logging.getLogger("tiue.pipeline")
PIPELINE_CLASS_NAME = "TiUEPipeline"  # what a saved folder's model_index.json names

__all__ = [
    "MODES",
    "OUTPUT_TYPES",
    "PIPELINE_CLASS_NAME",
    "TIMESTEP_SPACINGS",
    "TiUEPipeline",
    "TiUEPipelineOutput",
    "encode_prompt_embeddings",
]


OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MODES = ("loopfree", "loop")


@dataclass
class TiUEPipelineOutput(BaseOutput):
    """images: a list of PIL images, a (B, H, W, 3) array, a (B, 3, H, W) tensor in [0, 1], or
    the (B, C, h, w) latent z_0, by output_type."""

    images: list[PIL.Image.Image] | np.ndarray | torch.Tensor


class TiUEPipeline(DiffusionPipeline):
    """Loop-free sampler for Stable Diffusion 1.x / 2.x checkpoints distilled with TiUE.

    `mode="loopfree"` (the default) runs the UNet encoder once on the noise at the first
    timestep, all K decoder steps as one batch, combines their outputs with the K+1 loop-free
    DDIM coefficients in one fused op and decodes with the VAE. `mode="loop"` samples with the
    ordinary per-step loop and the full UNet, with `self.scheduler`.

    Whatever scheduler class the checkpoint names, a DDIMScheduler is built from its config at
    load time, as the paper's code does. A scheduler set afterwards (`pipe.scheduler = ...`)
    drives `mode="loop"` as it is; the loop-free pass is DDIM by construction and takes its
    coefficients from a DDIMScheduler with that scheduler's config.

    Guidance: distilled TiUE students are trained without classifier-free guidance and sample
    with the default `guidance_scale=1`. A scale above 1 (with an optional `negative_prompt`)
    guides the loop too and, in the loop-free pass, each decoder's output (conditional and
    unconditional rows in one batch), which is exact CFG for the pass since the combination is
    linear; it doubles the UNet's batch.

    Offload: `enable_model_cpu_offload()` works in both modes (the loop-free pass calls the UNet's
    blocks directly, so it fires the UNet's offload hook itself); it cannot be combined with the
    fast path. VAE slicing and tiling apply to the VAE decode; attention slicing replaces the
    decoder's shared-text attention with diffusers' sliced processor (same images, slower).

    Safety: TiUE folders carry no safety checker and this pipeline runs none; filter images
    yourself where they reach other people.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"
    # What save_pretrained writes: this class's name, and the diffusers pipeline of the base model.
    saved_class_name = PIPELINE_CLASS_NAME
    base_pipeline_class_name = "StableDiffusionPipeline"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler,
    ):
        super().__init__()
        self.register_modules(
            vae=vae,
            text_encoder=text_encoder,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=as_ddim_scheduler(scheduler),
        )
        self.vae_scale_factor = vae_scale_factor(self.vae)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._tiue_unet: TiUEUNet | None = None
        self._fast_path: FastPath | None = None
        self._fast_path_settings: dict = {}  # what enable_fast_path was given, to rebuild it
        self._coefficient_cache: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}

    def with_timestep_spacing(self, timestep_spacing: str | None) -> "TiUEPipeline":
        """These models with a DDIM scheduler of another timestep spacing ("leading",
        "trailing", "linspace"); None or the current spacing returns this pipeline itself.
        A student samples best with the spacing it was trained with, which its scheduler
        config records; one-step samplers run at t = 999 only with "trailing"."""
        if timestep_spacing is None or timestep_spacing == self.scheduler.config.timestep_spacing:
            return self
        if timestep_spacing not in TIMESTEP_SPACINGS:
            raise ValueError(
                f"timestep_spacing: expected one of {', '.join(TIMESTEP_SPACINGS)}, got {timestep_spacing!r}"
            )
        scheduler = DDIMScheduler.from_config(self.scheduler.config, timestep_spacing=timestep_spacing)
        pipe = type(self)(**{**self.components, "scheduler": scheduler})
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a hub id, a local SD 1.x / 2.x pipeline folder, or an embedded model by name
        (see `tiue.embedded`). Accepts diffusers' from_pretrained keyword arguments."""
        folder = resolve_model(str(pretrained_model_name_or_path))
        check_model_folder(folder)  # a config value that makes no sense: one line naming file and value
        return super().from_pretrained(folder, **kwargs)

    def save_pretrained(self, save_directory, *args, model_card: dict | None = None, **kwargs) -> None:
        """Save a pipeline folder whose model_index.json names TiUEPipeline, with a README.md
        model card.

        diffusers' `DiffusionPipeline.from_pretrained` then refuses the folder instead of silently
        sampling it with a multi-step scheduler; `StableDiffusionPipeline.from_pretrained` still
        loads its components. `model_card`: keyword arguments of `tiue.model_card.model_card`
        (name, base_model, num_steps, training) over the defaults this pipeline knows.
        """
        super().save_pretrained(save_directory, *args, **kwargs)
        follow_umask(*Path(save_directory).glob("*/*.safetensors"))  # safetensors writes them 0600
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = self.saved_class_name
        write_text_atomically(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")
        card = dict(name=Path(save_directory).name, timestep_spacing=self.scheduler.config.timestep_spacing)
        if self.saved_class_name != PIPELINE_CLASS_NAME:
            card |= {"pipeline_class": self.saved_class_name, "base_pipeline_class": self.base_pipeline_class_name}
        write_model_card(save_directory, **(card | (model_card or {})))

    # -- parts ---------------------------------------------------------------------------

    @property
    def tiue_unet(self) -> TiUEUNet:
        """The loop-free view of `self.unet` (re-made if the unet component is replaced)."""
        if self._tiue_unet is None or self._tiue_unet.unet is not self.unet:
            self._tiue_unet = TiUEUNet(self.unet)
        return self._tiue_unet

    def loopfree_schedule(self, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, coeffs) for K steps, cached per scheduler config and K. The loop-free pass
        is a DDIM chain: another scheduler class contributes its config (noise schedule, spacing)."""
        key = (json.dumps(dict(self.scheduler.config), sort_keys=True, default=str), num_inference_steps)
        if key not in self._coefficient_cache:
            self._coefficient_cache[key] = loopfree_coefficients(as_ddim_scheduler(self.scheduler), num_inference_steps)
        return self._coefficient_cache[key]

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
    ) -> torch.Tensor:
        """Text embeddings (len(prompt) * num_images_per_prompt, L, D), each prompt's copies adjacent."""
        prompts = check_prompt_list("prompt", prompt)
        check_positive_int("num_images_per_prompt", num_images_per_prompt)
        device = torch.device(device) if device is not None else self._execution_device
        embeds = encode_prompt_embeddings(self.tokenizer, self.text_encoder, prompts, device)
        return embeds.repeat_interleave(num_images_per_prompt, dim=0)

    def prepare_latents(
        self,
        batch_size: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None = None,
        noise_sigma: float | None = None,
    ) -> torch.Tensor:
        """Initial noise z_K, drawn as diffusers' StableDiffusionPipeline draws it, times the
        scheduler's initial sigma (`noise_sigma` overrides it: 1 for the loop-free DDIM pass)."""
        shape = (
            batch_size,
            self.unet.config.in_channels,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        else:
            latents = latents.to(device=device, dtype=dtype)
        return latents * (self.scheduler.init_noise_sigma if noise_sigma is None else noise_sigma)

    # -- fast path -----------------------------------------------------------------------

    def enable_fast_path(
        self,
        compile: bool = True,
        cuda_graphs: bool | None = None,
        fuse_qkv: bool = True,
        channels_last: bool = True,
        compile_mode: str | None = None,
        freeze_weights: bool = False,
        backend: str | None = None,
        max_signatures: int = MAX_SIGNATURES,
    ) -> FastPathStats:
        """Compile the one pass (fullgraph, no recompiles for a seen shape) and, on CUDA, capture
        it into one CUDA graph per (batch, height, width, K, dtype). Call after `.to(device)`.

        Args:
            compile: torch.compile the encoder, batched decoder, combination and VAE decoder.
            cuda_graphs: capture CUDA graphs; None means yes on CUDA, no elsewhere.
            fuse_qkv: fuse attention projections (q/k/v, and k/v for cross-attention).
            channels_last: channels_last memory format for the UNet and the VAE.
            compile_mode: passed to torch.compile (default: inductor's default mode). With CUDA graphs
                on, "reduce-overhead" and "max-autotune" are refused: inductor's own graphs would nest.
            freeze_weights: let inductor treat the weights as constants (folded, and on a CPU prepacked
                for oneDNN). On this project's small CPU benchmark UNet it brought the fast path from
                0.93x to 0.88x of the paper's way (docs/benchmarks.md). `load_unet_weights` then
                recompiles.
            backend: "inductor" (torch.compile) or "openvino" (fp32 on a CPU, needs
                `pip install openvino`): the pass is converted to an OpenVINO model once per input
                signature and run by OpenVINO's CPU plugin. None (default): "openvino" for a
                compiled fp32 CPU pipeline with inductor's defaults when openvino is installed,
                else "inductor"; `fast_path_backend` says which runs. On this project's CPU benchmark it runs
                at 0.76-0.78x of the paper's way where inductor reaches 0.88-0.95x
                (docs/benchmarks.md). Weights become constants: `load_unet_weights` reconverts.
            max_signatures: how many input signatures to compile (and capture) at most: batch size,
                height and width, K, dtype, output latent or image, guided or not. The guidance scale
                is a tensor input, so a sweep of scales compiles once. A call that needs one more
                raises RuntimeError.

        Returns the stats object (compile_seconds, capture_seconds, ...), also at
        `self.fast_path_stats`. A new shape triggers one compile/capture; `warmup` pre-captures.
        """
        offloaded = [name for name in ("text_encoder", "unet", "vae") if hasattr(getattr(self, name), "_hf_hook")]
        if offloaded:
            raise RuntimeError(
                f"enable_fast_path: {', '.join(offloaded)} carry accelerate offload hooks (model CPU offload), "
                "which move the weights on every call; compiled graphs need them in place. Call "
                "remove_all_hooks() and .to(device) first"
            )
        self.disable_fast_path()
        settings = dict(compile=compile, cuda_graphs=cuda_graphs, fuse_qkv=fuse_qkv, channels_last=channels_last,
                        compile_mode=compile_mode, freeze_weights=freeze_weights, backend=backend,
                        max_signatures=max_signatures)
        self._fast_path = FastPath(self.tiue_unet, self.vae, **settings)
        self._fast_path_settings = settings
        return self._fast_path.stats

    def disable_fast_path(self) -> None:
        """Restore the eager path: unfused projections, default memory format, no graphs."""
        if self._fast_path is not None:
            self._fast_path.remove()
            self._fast_path = None

    @property
    def fast_path_backend(self) -> str | None:
        """The fast path's backend ("inductor" or "openvino"), None when it is off."""
        return None if self._fast_path is None else self._fast_path.backend

    @property
    def fast_path_stats(self) -> FastPathStats | None:
        return None if self._fast_path is None else self._fast_path.stats

    def warmup(
        self,
        batch_sizes: list[int] = (1,),
        resolutions: list[tuple[int, int]] | None = None,
        num_inference_steps: int = 4,
        output_type: str = "pil",
    ) -> None:
        """Compile (and capture) the fast path for each batch size and (height, width) now."""
        if self._fast_path is None:
            raise RuntimeError("warmup: call enable_fast_path() first")
        default = self.unet.config.sample_size * self.vae_scale_factor
        embeds = self.encode_prompt([""])
        for height, width in resolutions or [(default, default)]:
            for batch in batch_sizes:
                self(
                    prompt_embeds=embeds.expand(batch, -1, -1),
                    num_inference_steps=num_inference_steps,
                    height=height,
                    width=width,
                    output_type=output_type,
                )

    def load_unet_weights(self, path_or_state_dict) -> int:
        """Copy new UNet weights of the same architecture into the live UNet, in place.

        Accepts a state dict, a .safetensors file, a UNet folder or a pipeline folder. The
        next call uses them without recompiling or recapturing, except with
        `enable_fast_path(freeze_weights=True)` or `backend="openvino"`, whose compiled code holds
        the old weights as constants: that fast path is rebuilt (one recompile). Returns the
        tensor count.
        """
        if self._fast_path is not None and self._fast_path.bakes_weights:
            settings = self._fast_path_settings
            _log.warning("load_unet_weights: the fast path froze the old weights; recompiling it")
            self.disable_fast_path()
            count = load_weights_in_place(self.unet, path_or_state_dict)
            self.enable_fast_path(**settings)
            return count
        count = load_weights_in_place(self.unet, path_or_state_dict)
        if self._fast_path is not None:
            self._fast_path.refresh_timestep_embeddings()
        return count

    # -- sampling ------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        num_inference_steps: int = 4,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        mode: str = "loopfree",
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
    ) -> TiUEPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: one prompt or a list; exclusive with `prompt_embeds`.
            num_inference_steps: K, the decoder steps (loopfree) or scheduler steps (loop).
            height, width: image size in pixels, multiples of the VAE's downsampling factor;
                default the UNet's sample size times that factor. At most 16384, and not below the
                smallest size the model's GroupNorms take (tiue.model_checks says which).
            num_images_per_prompt: images per prompt (copies of a prompt are adjacent).
            generator: a torch.Generator, or one per image.
            latents: the initial noise z_K, (B, C, height/f, width/f); drawn if None.
            prompt_embeds: precomputed text embeddings (B, L, D), e.g. interpolated ones.
            output_type: "pil", "np", "pt" (floats in [0, 1], (B, 3, H, W)) or "latent" (z_0).
            return_dict: return a TiUEPipelineOutput, else a one-element tuple.
            mode: "loopfree" (encoder once, K decoders in one batch) or "loop" (the scheduler's
                step-by-step loop with the full UNet).
            guidance_scale: classifier-free guidance; 1 (the default, what distilled students are
                trained for) runs none, above 1 guides both modes (the UNet batch doubles).
            negative_prompt: what the unconditional half sees when guiding (default "").
            negative_prompt_embeds: the same as embeddings, shaped like `prompt_embeds`.
        """
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height = default_size if height is None else height  # 0 is an error, not "the default"
        width = default_size if width is None else width
        batch_size = self.check_inputs(
            prompt, prompt_embeds, num_inference_steps, height, width, num_images_per_prompt, generator, latents,
            output_type, mode, guidance_scale, negative_prompt, negative_prompt_embeds,
        )
        guided = guidance_scale > 1
        if not guided and (negative_prompt is not None or negative_prompt_embeds is not None):
            _log.warning("negative_prompt is ignored: guidance_scale=%s does no guidance (it takes > 1)", guidance_scale)
        device = self._execution_device
        text = self._text_embeddings(prompt, prompt_embeds, device, num_images_per_prompt)
        if guided:
            unconditional = self._unconditional_embeddings(
                negative_prompt, negative_prompt_embeds, prompt, prompt_embeds, device, num_images_per_prompt
            )
            text = torch.cat([unconditional, text])
        noise_sigma = self.scheduler.init_noise_sigma if mode == "loop" else 1.0  # the pass is DDIM's
        latents = self.prepare_latents(batch_size, height, width, text.dtype, device, generator, latents, noise_sigma)
        return self._generate(latents, text, num_inference_steps, guidance_scale if guided else None, generator,
                              mode, output_type, return_dict)

    def _generate(
        self, latents, text, num_steps: int, guidance_scale: float | None, generator, mode: str, output_type: str,
        return_dict: bool, added_cond_kwargs: dict | None = None,
    ) -> TiUEPipelineOutput | tuple:
        """From z_K and the (guided) text rows to the output: the one pass or the loop, the VAE,
        post-processing. Shared by every pipeline of this family."""
        decode = output_type != "latent"
        if mode == "loopfree":
            image = self._loopfree_pass(latents, text, num_steps, decode, guidance_scale, added_cond_kwargs)
        else:
            image = self._sample_loop(latents, text, num_steps, guidance_scale, generator, added_cond_kwargs)
            if decode:
                image = self.vae.decode(image.to(self.vae.dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        check_finite_output(image, "images" if decode else "latents")  # never a black PNG from NaN
        if decode:
            image = self.image_processor.postprocess(
                image, output_type=output_type, do_denormalize=[True] * image.shape[0]
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return TiUEPipelineOutput(images=image)

    def check_inputs(
        self, prompt, prompt_embeds, num_inference_steps, height, width, num_images_per_prompt, generator, latents,
        output_type, mode, guidance_scale, negative_prompt, negative_prompt_embeds,
    ) -> int:
        """Check a call's arguments against this pipeline's models (as diffusers' pipelines do);
        returns the number of images. Each error names the argument, what it got and what it takes."""
        batch_size = check_call_arguments(
            prompt=prompt,
            prompt_embeds=prompt_embeds,
            num_inference_steps=num_inference_steps,
            max_steps=self.scheduler.config.num_train_timesteps,
            height=height,
            width=width,
            size_multiple=self.vae_scale_factor,
            num_images_per_prompt=num_images_per_prompt,
            generator=generator,
            latents=latents,
            latent_channels=self.unet.config.in_channels,
            text_width=self.unet.config.cross_attention_dim,
            output_type=output_type,
            output_types=OUTPUT_TYPES,
            mode=mode,
            modes=MODES,
        )
        check_guidance(guidance_scale, negative_prompt, negative_prompt_embeds,
                       batch_size // num_images_per_prompt, prompt_embeds)
        if mode == "loop":  # the loop-free pass checks its timesteps where its coefficients are made
            ddim_timesteps(as_ddim_scheduler(self.scheduler), num_inference_steps)
        check_pipeline_size(self, height, width, batch_size, num_inference_steps, guidance_scale > 1, mode, output_type)
        return batch_size

    def _text_embeddings(self, prompt, prompt_embeds, device, copies: int) -> torch.Tensor:
        if prompt_embeds is None:
            return self.encode_prompt(prompt, device, copies)
        return prompt_embeds.to(device=device, dtype=self.unet.dtype).repeat_interleave(copies, dim=0)

    def _unconditional_embeddings(
        self, negative_prompt, negative_prompt_embeds, prompt, prompt_embeds, device, copies: int
    ) -> torch.Tensor:
        """The guidance's unconditional rows, one per image, in the prompts' order."""
        if negative_prompt_embeds is not None:
            return self._text_embeddings(None, negative_prompt_embeds, device, copies)
        count = prompt_embeds.shape[0] if prompt_embeds is not None else (1 if isinstance(prompt, str) else len(prompt))
        negatives = [negative_prompt or ""] * count if not isinstance(negative_prompt, (list, tuple)) else negative_prompt
        return self.encode_prompt(list(negatives), device, copies)

    def _loopfree_pass(
        self, latents: torch.Tensor, text: torch.Tensor, num_steps: int, decode: bool, guidance_scale: float | None,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The image in [-1, 1] (decode) or z_0, by the fast path when it is enabled.
        `added_cond_kwargs`: SDXL-class UNets' text_embeds and time_ids, rows as `text`'s."""
        timesteps, coeffs = self.loopfree_schedule(num_steps)
        if self._fast_path is not None:
            return self._fast_path(latents, text, timesteps, coeffs, decode, guidance_scale, added_cond_kwargs)
        # accelerate's offload hook wraps unet.forward, which the pass never calls: fire it here
        # (it moves the UNet to the device and the text encoder off). The VAE's decode fires its own.
        run_offload_hook(self.unet)
        timesteps = timesteps.to(latents.device)
        temb = self.tiue_unet.time_embedding(timesteps, latents.dtype)
        one_pass = OnePass(self.tiue_unet, self.vae)
        return one_pass(latents, text, timesteps, temb, tuple(coeffs.tolist()), decode, guidance_scale, added_cond_kwargs)

    def _sample_loop(
        self, latents: torch.Tensor, text: torch.Tensor, num_steps: int, guidance_scale: float | None, generator,
        added_cond_kwargs: dict[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """z_0 by `self.scheduler`'s own loop (a fresh copy: schedulers keep per-run state)."""
        scheduler = self.scheduler.__class__.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_steps, device=latents.device)
        step_arguments = inspect.signature(scheduler.step).parameters
        extra = {}
        if "eta" in step_arguments:
            extra["eta"] = 0.0  # deterministic DDIM, as the loop-free pass
        if "generator" in step_arguments:
            extra["generator"] = generator
        for t in self.progress_bar(scheduler.timesteps):
            model_input = latents if guidance_scale is None else torch.cat([latents, latents])
            model_input = scheduler.scale_model_input(model_input, t)
            output = self.unet(
                model_input, t, encoder_hidden_states=text, added_cond_kwargs=added_cond_kwargs, return_dict=False
            )[0]
            if guidance_scale is not None:
                unconditional, conditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            latents = scheduler.step(output, t, latents, **extra, return_dict=False)[0]
        return latents

    # -- memory switches -----------------------------------------------------------------
    # StableDiffusionPipeline's names for the VAE's own switches; both modes decode through
    # vae.decode, which honours them.

    def enable_vae_slicing(self) -> None:
        """Decode the batch one image at a time (less memory, same images)."""
        self.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Decode large images in overlapping tiles (less memory; seams are blended)."""
        self.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.vae.disable_tiling()

    # -- offload -------------------------------------------------------------------------

    def enable_model_cpu_offload(self, *args, **kwargs) -> None:
        """diffusers' model offload (text encoder, UNet, VAE each on the device only while it
        runs); refused while the fast path is on, whose compiled graphs hold the weights in place."""
        if self._fast_path is not None:
            raise RuntimeError(
                "enable_model_cpu_offload: the fast path is enabled, and its compiled graphs need the "
                "weights to stay on the device; call disable_fast_path() first"
            )
        super().enable_model_cpu_offload(*args, **kwargs)


def run_offload_hook(module: torch.nn.Module) -> None:
    """Fire accelerate's pre-forward hook of `module`, if it has one, as its forward() would."""
    hook = getattr(module, "_hf_hook", None)
    if hook is not None:
        hook.pre_forward(module)
