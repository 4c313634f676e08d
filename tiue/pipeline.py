"""TiUEPipeline: one-pass text-to-image sampling with a TiUE-distilled Stable Diffusion model."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DDIMScheduler, DiffusionPipeline, UNet2DConditionModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPTextModel, CLIPTokenizer

from tiue.embedded import resolve_model
from tiue.fast import FastPath, FastPathStats, OnePass, load_weights_in_place
from tiue.schedule import TIMESTEP_SPACINGS, as_ddim_scheduler, ddim_timesteps, loopfree_coefficients
from tiue.files import write_text_atomically
from tiue.unet import TiUEUNet
from tiue.validation import check_call_arguments

__all__ = ["TiUEPipeline", "TiUEPipelineOutput", "OUTPUT_TYPES", "MODES", "TIMESTEP_SPACINGS", "encode_prompt_embeddings"]


@torch.no_grad()
def encode_prompt_embeddings(tokenizer, text_encoder, prompts: list[str], device: torch.device) -> torch.Tensor:
    """(len(prompts), L, D) text embeddings in one text-encoder call, padded to the tokenizer's
    maximum length as SD's pipelines do (with the attention mask when the encoder asks for it).
    The one text-encoding path of the sampler and the trainer."""
    tokens = tokenizer(
        prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    attention_mask = None
    if getattr(text_encoder.config, "use_attention_mask", False):
        attention_mask = tokens.attention_mask.to(device)
    embeds = text_encoder(tokens.input_ids.to(device), attention_mask=attention_mask)[0]
    return embeds.to(dtype=text_encoder.dtype, device=device)

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
    ordinary per-step DDIM loop and the full UNet.

    Whatever scheduler class the checkpoint names, a DDIMScheduler is built from its config,
    as the paper's code does.
    """

    model_cpu_offload_seq = "text_encoder->unet->vae"

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
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)
        self._tiue_unet: TiUEUNet | None = None
        self._fast_path: FastPath | None = None
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
        pipe = type(self)(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=self.unet,
                          scheduler=scheduler)
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a hub id, a local SD 1.x / 2.x pipeline folder, or an embedded model by name
        (see `tiue.embedded`). Accepts diffusers' from_pretrained keyword arguments."""
        return super().from_pretrained(resolve_model(str(pretrained_model_name_or_path)), **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs) -> None:
        """Save as a plain Stable Diffusion pipeline folder, loadable by this class and by
        diffusers' StableDiffusionPipeline alike (the paper's checkpoints are such folders)."""
        super().save_pretrained(save_directory, *args, **kwargs)
        index_path = Path(save_directory) / "model_index.json"
        index = json.loads(index_path.read_text())
        index["_class_name"] = "StableDiffusionPipeline"
        for optional in ("safety_checker", "feature_extractor", "image_encoder"):
            index.setdefault(optional, [None, None])
        index.setdefault("requires_safety_checker", False)
        write_text_atomically(index_path, json.dumps(index, indent=2, sort_keys=True) + "\n")

    # -- parts ---------------------------------------------------------------------------

    @property
    def tiue_unet(self) -> TiUEUNet:
        """The loop-free view of `self.unet` (re-made if the unet component is replaced)."""
        if self._tiue_unet is None or self._tiue_unet.unet is not self.unet:
            self._tiue_unet = TiUEUNet(self.unet)
        return self._tiue_unet

    def loopfree_schedule(self, num_inference_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(timesteps, coeffs) for K steps, cached per scheduler config and K."""
        key = (json.dumps(dict(self.scheduler.config), sort_keys=True, default=str), num_inference_steps)
        if key not in self._coefficient_cache:
            self._coefficient_cache[key] = loopfree_coefficients(self.scheduler, num_inference_steps)
        return self._coefficient_cache[key]

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
    ) -> torch.Tensor:
        """Text embeddings (len(prompt) * num_images_per_prompt, L, D), each prompt's copies adjacent."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
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
    ) -> torch.Tensor:
        """Initial noise z_K, drawn as diffusers' StableDiffusionPipeline draws it."""
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
        return latents * self.scheduler.init_noise_sigma

    # -- fast path -----------------------------------------------------------------------

    def enable_fast_path(
        self,
        compile: bool = True,
        cuda_graphs: bool | None = None,
        fuse_qkv: bool = True,
        channels_last: bool = True,
        compile_mode: str | None = None,
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

        Returns the stats object (compile_seconds, capture_seconds, ...), also at
        `self.fast_path_stats`. A new shape triggers one compile/capture; `warmup` pre-captures.
        """
        self.disable_fast_path()
        self._fast_path = FastPath(
            self,
            compile=compile,
            cuda_graphs=cuda_graphs,
            fuse_qkv=fuse_qkv,
            channels_last=channels_last,
            compile_mode=compile_mode,
        )
        return self._fast_path.stats

    def disable_fast_path(self) -> None:
        """Restore the eager path: unfused projections, default memory format, no graphs."""
        if self._fast_path is not None:
            self._fast_path.remove()
            self._fast_path = None

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
        next call uses them without recompiling or recapturing. Returns the tensor count.
        """
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
    ) -> TiUEPipelineOutput | tuple:
        """Generate images.

        Args:
            prompt: one prompt or a list; exclusive with `prompt_embeds`.
            num_inference_steps: K, the decoder steps (loopfree) or DDIM steps (loop).
            height, width: image size in pixels, multiples of the VAE's downsampling factor;
                default the UNet's sample size times that factor.
            num_images_per_prompt: images per prompt (copies of a prompt are adjacent).
            generator: a torch.Generator, or one per image.
            latents: the initial noise z_K, (B, C, height/f, width/f); drawn if None.
            prompt_embeds: precomputed text embeddings (B, L, D), e.g. interpolated ones.
            output_type: "pil", "np", "pt" (floats in [0, 1], (B, 3, H, W)) or "latent" (z_0).
            return_dict: return a TiUEPipelineOutput, else a one-element tuple.
            mode: "loopfree" (encoder once, K decoders in one batch) or "loop" (DDIM loop).
        """
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height = default_size if height is None else height  # 0 is an error, not "the default"
        width = default_size if width is None else width
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
        if mode == "loop":  # the loop-free pass checks its timesteps where its coefficients are made
            ddim_timesteps(self.scheduler, num_inference_steps)
        device = self._execution_device
        if prompt_embeds is None:
            prompt_embeds = self.encode_prompt(prompt, device, num_images_per_prompt)
        else:
            prompt_embeds = prompt_embeds.to(device=device, dtype=self.unet.dtype)
            prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        latents = self.prepare_latents(
            batch_size, height, width, prompt_embeds.dtype, device, generator, latents
        )

        decode = output_type != "latent"
        if mode == "loopfree":
            image = self._loopfree_pass(latents, prompt_embeds, num_inference_steps, decode)
        else:
            z0 = self._sample_loop(latents, prompt_embeds, num_inference_steps)
            if decode:
                z0 = z0.to(self.vae.dtype) / self.vae.config.scaling_factor
                image = self.vae.decode(z0, return_dict=False)[0]
            else:
                image = z0
        if decode:
            image = self.image_processor.postprocess(
                image, output_type=output_type, do_denormalize=[True] * image.shape[0]
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (image,)
        return TiUEPipelineOutput(images=image)

    def _loopfree_pass(
        self, latents: torch.Tensor, prompt_embeds: torch.Tensor, num_steps: int, decode: bool
    ) -> torch.Tensor:
        """The image in [-1, 1] (decode) or z_0, by the fast path when it is enabled."""
        timesteps, coeffs = self.loopfree_schedule(num_steps)
        if self._fast_path is not None:
            return self._fast_path(latents, prompt_embeds, timesteps, coeffs, decode)
        timesteps = timesteps.to(latents.device)
        temb = self.tiue_unet.time_embedding(timesteps, latents.dtype)
        one_pass = OnePass(self.tiue_unet, self.vae)
        return one_pass(latents, prompt_embeds, timesteps, temb, tuple(coeffs.tolist()), decode)

    def _sample_loop(
        self, latents: torch.Tensor, prompt_embeds: torch.Tensor, num_steps: int
    ) -> torch.Tensor:
        scheduler = as_ddim_scheduler(self.scheduler.__class__.from_config(self.scheduler.config))
        scheduler.set_timesteps(num_steps, device=latents.device)
        for t in self.progress_bar(scheduler.timesteps):
            model_input = scheduler.scale_model_input(latents, t)
            output = self.unet(model_input, t, encoder_hidden_states=prompt_embeds, return_dict=False)[0]
            latents = scheduler.step(output, t, latents, eta=0.0, return_dict=False)[0]
        return latents
