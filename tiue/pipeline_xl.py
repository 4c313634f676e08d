"""TiUEXLPipeline: one-pass text-to-image sampling with a TiUE-distilled SDXL-class model.

Everything after the text encoders is TiUEPipeline's: the same loop-free pass (OnePass, with the
SDXL added conditions passed through), the same coefficients, argument checks, latents, loop
mode, fast path and save_pretrained. This module adds what SDXL does differently: two text
encoders, the pooled prompt embedding and the six time ids that make the UNet's added embedding.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from tiue.arguments import check_prompt_list
from tiue.pipeline import TiUEPipeline, TiUEPipelineOutput
from tiue.text import tokenize_prompts

_log = logging.getLogger("tiue.pipeline_xl")
XL_PIPELINE_CLASS_NAME = "TiUEXLPipeline"
# model_index.json class names that mark an SDXL-class folder (with the text_encoder_2 entry).
XL_CLASS_NAMES = ("StableDiffusionXLPipeline", XL_PIPELINE_CLASS_NAME)

__all__ = [
    "XL_CLASS_NAMES", "XL_PIPELINE_CLASS_NAME", "TiUEXLPipeline", "check_xl_added_embedding", "encode_xl_prompt",
    "is_xl_model_index",
]


def is_xl_model_index(index: dict) -> bool:
    """Whether a model_index.json's content describes an SDXL-class pipeline."""
    return index.get("_class_name") in XL_CLASS_NAMES or "text_encoder_2" in index


@torch.no_grad()
def encode_xl_prompt(
    tokenizers: Sequence[CLIPTokenizer],
    text_encoders: Sequence[torch.nn.Module],
    prompts: Sequence[list[str]],
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SDXL's text embeddings, by diffusers' StableDiffusionXLPipeline.encode_prompt rule: the
    penultimate hidden state of each encoder (its own prompt list), concatenated along the width,
    and the pooled output of the first encoder that returns one (the projected text_encoder_2).
    Returns (B, L, D1 + D2) and (B, P)."""
    hidden, pooled = [], None
    for tokenizer, text_encoder, prompt_list in zip(tokenizers, text_encoders, prompts):
        ids = tokenize_prompts(tokenizer, list(prompt_list)).input_ids.to(device)
        output = text_encoder(ids, output_hidden_states=True)
        if pooled is None and output[0].ndim == 2:  # CLIPTextModelWithProjection's text_embeds
            pooled = output[0]
        hidden.append(output.hidden_states[-2])
    if pooled is None:
        raise ValueError("text_encoder_2: expected a CLIPTextModelWithProjection (it gives SDXL's pooled embedding)")
    dtype = text_encoders[-1].dtype
    return torch.cat(hidden, dim=-1).to(dtype=dtype, device=device), pooled.to(dtype=dtype, device=device)


def check_xl_added_embedding(unet: UNet2DConditionModel, pooled_width: int, flag: str = "unet") -> None:
    """Refuse a UNet whose added embedding is not SDXL-base's: six time ids and the pooled text
    embedding of `pooled_width` (the refiner's five ids with an aesthetic score are not supported)."""
    num_ids = 6
    per_id = unet.config.addition_time_embed_dim
    expected = unet.add_embedding.linear_1.in_features
    if per_id * num_ids + pooled_width != expected:
        raise ValueError(
            f"{flag}: its added embedding takes {expected} features, but {num_ids} time ids of "
            f"{per_id} and a pooled text embedding of {pooled_width} make "
            f"{per_id * num_ids + pooled_width}; is it an SDXL refiner? (not supported)"
        )


def _as_prompt_list(name: str, value, default: list[str]) -> list[str]:
    if value is None:
        return default
    prompts = [value] if isinstance(value, str) else value
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise TypeError(f"{name}: expected a string or a list of strings, got {value!r:.80}")
    if len(prompts) != len(default):
        raise ValueError(f"{name}: expected one per prompt ({len(default)}), got a list of {len(prompts)}")
    return list(prompts)


def _check_size_pair(name: str, value) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list))
        or len(value) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value)
    ):
        raise ValueError(f"{name}: expected a pair of integers >= 0 (height, width) or (top, left), got {value!r:.80}")
    return tuple(value)


def _check_pooled(name: str, pooled, embeds_name: str, embeds, width: int) -> None:
    if embeds is None:
        return
    if pooled is None:
        raise ValueError(f"{name}: required with {embeds_name} (SDXL's UNet needs the pooled text embedding)")
    expected = (embeds.shape[0], width)
    if not isinstance(pooled, torch.Tensor) or tuple(pooled.shape) != expected:
        got = tuple(pooled.shape) if isinstance(pooled, torch.Tensor) else type(pooled).__name__
        raise ValueError(f"{name}: expected shape {expected} (one row per {embeds_name} row), got {got}")


class TiUEXLPipeline(TiUEPipeline):
    """Loop-free sampler for SDXL-class checkpoints distilled with TiUE.

    As TiUEPipeline (modes, guidance, fast path, offload, memory switches), with SDXL's inputs:
    `prompt_2` for the second text encoder, `pooled_prompt_embeds` with `prompt_embeds`, and the
    micro-conditioning `original_size`, `crops_coords_top_left` and `target_size`. The encoder
    half runs once at the first timestep on emb(t_0) + aug, each decoder on emb(t_k) + aug, where
    aug embeds the pooled text and the time ids; the K outputs combine as for SD.

    force_zeros_for_empty_prompt (the folder's setting, as diffusers reads it): when guiding without
    a negative prompt, the unconditional embeddings are zeros instead of those of "".
    The VAE is kept in fp32 when it is in fp16 and its config says force_upcast (SDXL's VAE
    overflows in fp16). The SDXL refiner (no text_encoder, aesthetic-score ids) is not supported.
    """

    model_cpu_offload_seq = "text_encoder->text_encoder_2->unet->vae"
    saved_class_name = XL_PIPELINE_CLASS_NAME
    base_pipeline_class_name = "StableDiffusionXLPipeline"

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        text_encoder_2: CLIPTextModelWithProjection,
        tokenizer: CLIPTokenizer,
        tokenizer_2: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler,
        force_zeros_for_empty_prompt: bool = True,
    ):
        if text_encoder is None or text_encoder_2 is None:
            missing = "text_encoder" if text_encoder is None else "text_encoder_2"
            raise ValueError(f"{missing}: TiUEXLPipeline needs both text encoders, got None (the SDXL refiner is not supported)")
        super().__init__(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)
        self.register_modules(text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2)
        self.register_to_config(force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)

    def with_timestep_spacing(self, timestep_spacing: str | None) -> TiUEXLPipeline:
        pipe = super().with_timestep_spacing(timestep_spacing)
        if pipe is not self:
            pipe.register_to_config(force_zeros_for_empty_prompt=self.config.force_zeros_for_empty_prompt)
        return pipe

    with_timestep_spacing.__doc__ = TiUEPipeline.with_timestep_spacing.__doc__

    # -- text ----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_prompt(
        self,
        prompt: str | list[str],
        prompt_2: str | list[str] | None = None,
        device: torch.device | str | None = None,
        num_images_per_prompt: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt_embeds (N, L, D), pooled_prompt_embeds (N, P)), N = len(prompt) *
        num_images_per_prompt, each prompt's copies adjacent; `prompt_2` (default `prompt`)
        goes to the second encoder."""
        prompts = check_prompt_list("prompt", prompt)
        prompts_2 = _as_prompt_list("prompt_2", prompt_2, prompts)
        device = torch.device(device) if device is not None else self._execution_device
        embeds, pooled = encode_xl_prompt(
            (self.tokenizer, self.tokenizer_2), (self.text_encoder, self.text_encoder_2), (prompts, prompts_2), device
        )
        return embeds.repeat_interleave(num_images_per_prompt, 0), pooled.repeat_interleave(num_images_per_prompt, 0)

    def _xl_text(self, prompt, prompt_2, prompt_embeds, pooled_prompt_embeds, device, copies):
        if prompt_embeds is None:
            return self.encode_prompt(prompt, prompt_2, device, copies)
        dtype = self.unet.dtype
        return (
            prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(copies, 0),
            pooled_prompt_embeds.to(device=device, dtype=dtype).repeat_interleave(copies, 0),
        )

    def _xl_unconditional(
        self, negative_prompt, negative_prompt_2, negative_prompt_embeds, negative_pooled_prompt_embeds,
        conditional: tuple[torch.Tensor, torch.Tensor], count: int, device, copies: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The guidance's unconditional rows, as StableDiffusionXLPipeline makes them."""
        if negative_prompt_embeds is not None:
            return self._xl_text(None, None, negative_prompt_embeds, negative_pooled_prompt_embeds, device, copies)
        if negative_prompt is None and self.config.force_zeros_for_empty_prompt:
            return torch.zeros_like(conditional[0]), torch.zeros_like(conditional[1])
        negatives = _as_prompt_list("negative_prompt", negative_prompt, [""] * count)
        negatives_2 = _as_prompt_list("negative_prompt_2", negative_prompt_2, negatives)
        return self.encode_prompt(negatives, negatives_2, device, copies)

    def time_ids(self, original_size, crops_coords_top_left, target_size, rows: int, dtype, device) -> torch.Tensor:
        """SDXL's six micro-conditioning ids per row, checked against the UNet's added embedding."""
        ids = [*original_size, *crops_coords_top_left, *target_size]
        check_xl_added_embedding(self.unet, self.text_encoder_2.config.projection_dim)
        return torch.tensor([ids], dtype=dtype, device=device).repeat(rows, 1)

    # -- VAE -----------------------------------------------------------------------------

    def _upcast_vae_if_needed(self) -> None:
        """SDXL's VAE overflows in fp16: keep it in fp32 when its config says force_upcast."""
        if self.vae.dtype == torch.float16 and self.vae.config.get("force_upcast", False):
            self.vae.to(dtype=torch.float32)

    def enable_fast_path(self, *args, **kwargs):
        self._upcast_vae_if_needed()  # before compiling, so the compiled VAE is the fp32 one
        return super().enable_fast_path(*args, **kwargs)

    enable_fast_path.__doc__ = TiUEPipeline.enable_fast_path.__doc__

    def warmup(self, batch_sizes=(1,), resolutions=None, num_inference_steps: int = 4, output_type: str = "pil") -> None:
        """Compile (and capture) the fast path for each batch size and (height, width) now."""
        if self._fast_path is None:
            raise RuntimeError("warmup: call enable_fast_path() first")
        default = self.unet.config.sample_size * self.vae_scale_factor
        embeds, pooled = self.encode_prompt([""])
        for height, width in resolutions or [(default, default)]:
            for batch in batch_sizes:
                self(prompt_embeds=embeds.expand(batch, -1, -1), pooled_prompt_embeds=pooled.expand(batch, -1),
                     num_inference_steps=num_inference_steps, height=height, width=width, output_type=output_type)

    # -- sampling ------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        prompt: str | list[str] | None = None,
        prompt_2: str | list[str] | None = None,
        num_inference_steps: int = 4,
        height: int | None = None,
        width: int | None = None,
        num_images_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        prompt_embeds: torch.Tensor | None = None,
        pooled_prompt_embeds: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        mode: str = "loopfree",
        guidance_scale: float = 1.0,
        negative_prompt: str | list[str] | None = None,
        negative_prompt_2: str | list[str] | None = None,
        negative_prompt_embeds: torch.Tensor | None = None,
        negative_pooled_prompt_embeds: torch.Tensor | None = None,
        original_size: tuple[int, int] | None = None,
        crops_coords_top_left: tuple[int, int] = (0, 0),
        target_size: tuple[int, int] | None = None,
    ) -> TiUEPipelineOutput | tuple:
        """Generate images. The arguments are TiUEPipeline's plus SDXL's:

        prompt_2 / negative_prompt_2: prompts for the second text encoder (default: prompt /
            negative_prompt). pooled_prompt_embeds / negative_pooled_prompt_embeds: the pooled
            embeddings that go with prompt_embeds / negative_prompt_embeds (both required then).
        original_size, target_size: (height, width) micro-conditioning, default (height, width);
            crops_coords_top_left: (top, left), default (0, 0).
        """
        default_size = self.unet.config.sample_size * self.vae_scale_factor
        height = default_size if height is None else height
        width = default_size if width is None else width
        batch_size = self.check_inputs(
            prompt, prompt_embeds, num_inference_steps, height, width, num_images_per_prompt, generator, latents,
            output_type, mode, guidance_scale, negative_prompt, negative_prompt_embeds,
        )
        pooled_width = self.text_encoder_2.config.projection_dim
        _check_pooled("pooled_prompt_embeds", pooled_prompt_embeds, "prompt_embeds", prompt_embeds, pooled_width)
        _check_pooled("negative_pooled_prompt_embeds", negative_pooled_prompt_embeds, "negative_prompt_embeds",
                      negative_prompt_embeds, pooled_width)
        if prompt is not None and prompt_2 is not None:
            _as_prompt_list("prompt_2", prompt_2, [prompt] if isinstance(prompt, str) else list(prompt))
        original_size = _check_size_pair("original_size", original_size or (height, width))
        crops_coords_top_left = _check_size_pair("crops_coords_top_left", crops_coords_top_left)
        target_size = _check_size_pair("target_size", target_size or (height, width))
        decode = output_type != "latent"
        if decode and self.vae.config.get("latents_mean") is not None:
            raise NotImplementedError("vae: configs with latents_mean/latents_std are not supported; use output_type='latent'")

        guided = guidance_scale > 1
        if not guided and any(v is not None for v in (negative_prompt, negative_prompt_2, negative_prompt_embeds)):
            _log.warning("negative_prompt is ignored: guidance_scale=%s does no guidance (it takes > 1)", guidance_scale)
        device = self._execution_device
        copies = num_images_per_prompt
        text, pooled = self._xl_text(prompt, prompt_2, prompt_embeds, pooled_prompt_embeds, device, copies)
        if guided:
            count = batch_size // copies
            negative, negative_pooled = self._xl_unconditional(
                negative_prompt, negative_prompt_2, negative_prompt_embeds, negative_pooled_prompt_embeds,
                (text, pooled), count, device, copies,
            )
            text, pooled = torch.cat([negative, text]), torch.cat([negative_pooled, pooled])
        added_cond_kwargs = {
            "text_embeds": pooled,
            "time_ids": self.time_ids(original_size, crops_coords_top_left, target_size, text.shape[0], text.dtype, device),
        }
        noise_sigma = self.scheduler.init_noise_sigma if mode == "loop" else 1.0  # the pass is DDIM's
        latents = self.prepare_latents(batch_size, height, width, text.dtype, device, generator, latents, noise_sigma)
        if decode:
            self._upcast_vae_if_needed()

        return self._generate(latents, text, num_inference_steps, guidance_scale if guided else None, generator,
                              mode, output_type, return_dict, added_cond_kwargs)
