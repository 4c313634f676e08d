"""The models every row runs on, at each scale, with random weights.

Latency does not depend on weight values, so no checkpoint is needed: "small" is the
SD-shaped CPU model of `tiue.testing.tiny`, "sd21" the Stable Diffusion 2.1-base
architecture (UNet, VAE and OpenCLIP-H text encoder shapes), written out here. The SDXL-class
scales have two text encoders and a UNet with added conditions (addition_embed_type
"text_time"): "small-xl" is an SDXL-shaped CPU model, "sdxl" the SDXL-base 1.0 architecture
(UNet, VAE, CLIP-L and OpenCLIP-bigG text encoders), for GPUs.
"""

from __future__ import annotations

import contextlib
import copy
import tempfile
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from tiue.conditioning import Conditioning
from tiue.pipeline_xl import check_xl_added_embedding, encode_xl_prompt
from tiue.testing.tiny import (
    SD21_SCHEDULER_CONFIG,
    build_components,
    build_text_encoder,
    build_tokenizer,
    build_vae,
    randomize_zero_parameters,
)
from tiue.testing.tiny_xl import build_text_encoder_2
from tiue.text import tokenize_prompts

__all__ = ["SCALES", "Models", "build_models", "default_image_size"]

SCALES = ("small", "sd21", "small-xl", "sdxl")
# Pixels per side: 32x32 latents at the small scales (VAE factor 4), the checkpoints' own sizes.
IMAGE_SIZES = {"small": 128, "sd21": 512, "small-xl": 128, "sdxl": 1024}

SD21_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=1024,
    attention_head_dim=(5, 10, 20, 20),
    dual_cross_attention=False,
    use_linear_projection=True,
    upcast_attention=False,
)

SD21_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    act_fn="silu",
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    scaling_factor=0.18215,
)

# OpenCLIP ViT-H/14's text tower as SD 2.x ships it (23 of its 24 layers are used).
SD21_TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=512,
)


# SDXL-base 1.0's UNet: three levels, no attention at the first, 1, 2 and 10 transformer layers
# (10 in the mid block too), 64-wide heads; the added embedding takes the pooled bigG embedding
# (1280) and six time ids of 256: 2816 features.
SDXL_UNET_CONFIG = dict(
    sample_size=128,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    only_cross_attention=False,
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    dual_cross_attention=False,
    use_linear_projection=True,
    upcast_attention=False,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

# SD's VAE shape with SDXL's latent scale; its fp16 activations overflow, hence force_upcast.
SDXL_VAE_CONFIG = dict(SD21_VAE_CONFIG, sample_size=1024, scaling_factor=0.13025, force_upcast=True)

# SDXL's text encoders: OpenAI CLIP ViT-L/14's text tower, and OpenCLIP ViT-bigG/14's with its
# projection (the pooled embedding of the added conditions).
SDXL_TEXT_ENCODER_CONFIG = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    projection_dim=768,
)
SDXL_TEXT_ENCODER_2_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1280,
    intermediate_size=5120,
    num_hidden_layers=32,
    num_attention_heads=20,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1280,
)

# "small-xl": SDXL's structure at "small"'s cost: channels (64, 128, 256), 1, 2 and 4
# transformer layers, 64-wide heads; text encoders of hidden 32 and 64 (projection 64).
SMALL_XL_TIME_EMBED_DIM = 16
SMALL_XL_TEXT_WIDTHS = (32, 64)
SMALL_XL_UNET_CONFIG = dict(
    SDXL_UNET_CONFIG,
    sample_size=32,
    block_out_channels=(64, 128, 256),
    transformer_layers_per_block=(1, 2, 4),
    attention_head_dim=(1, 2, 4),
    cross_attention_dim=sum(SMALL_XL_TEXT_WIDTHS),
    addition_time_embed_dim=SMALL_XL_TIME_EMBED_DIM,
    projection_class_embeddings_input_dim=SMALL_XL_TEXT_WIDTHS[1] + 6 * SMALL_XL_TIME_EMBED_DIM,
)


@dataclass
class Models:
    """One set of weights; rows that change modules in place work on `copy()`s of it.

    SDXL-class scales have the second text encoder and tokenizer; SD scales have None there.
    """

    scale: str
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None

    def ddim_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.scheduler_config)

    def components(self) -> dict:
        """The pipeline components (five for SD, seven for SDXL), sharing these modules."""
        parts = dict(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.ddim_scheduler(),
        )
        if self.is_xl:
            parts.update(text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
        return parts

    def copy(self) -> Models:
        """Same weights in new modules, so fusing or compiling one row cannot touch another."""
        return Models(
            scale=self.scale,
            vae=copy.deepcopy(self.vae),
            text_encoder=copy.deepcopy(self.text_encoder),
            tokenizer=self.tokenizer,
            unet=copy.deepcopy(self.unet),
            scheduler_config=dict(self.scheduler_config),
            device=self.device,
            dtype=self.dtype,
            text_encoder_2=copy.deepcopy(self.text_encoder_2),
            tokenizer_2=self.tokenizer_2,
        )

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def modules(self) -> tuple[torch.nn.Module, ...]:
        return tuple(m for m in (self.vae, self.text_encoder, self.text_encoder_2, self.unet) if m is not None)

    def parameter_bytes(self) -> int:
        modules = (self.vae, self.text_encoder, self.text_encoder_2, self.unet)
        return sum(p.numel() * p.element_size() for m in modules if m is not None for p in m.parameters())

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str], image_size: int) -> Conditioning:
        """The UNet's conditioning for these prompts, as the stock pipelines make it: SD's last
        hidden state; SDXL's two penultimate hidden states, the pooled embedding and the time
        ids of an uncropped image_size x image_size image (original = target size)."""
        if not self.is_xl:
            ids = tokenize_prompts(self.tokenizer, prompts).input_ids.to(self.device)
            return Conditioning(self.text_encoder(ids)[0])
        text, pooled = encode_xl_prompt(
            (self.tokenizer, self.tokenizer_2), (self.text_encoder, self.text_encoder_2), (prompts, prompts),
            self.device,
        )
        time_ids = torch.tensor([[image_size, image_size, 0, 0, image_size, image_size]], dtype=text.dtype,
                                device=self.device).repeat(len(prompts), 1)
        return Conditioning(text, dict(text_embeds=pooled, time_ids=time_ids))


def default_image_size(scale: str) -> int:
    """Pixels per side: 32x32 latents at the small scales (VAE factor 4), the checkpoint's own
    size (512 px for sd21, 1024 px for sdxl) at the others."""
    return IMAGE_SIZES[_check_scale(scale)]


def _check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    return scale


def _clip_config(config: dict, tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    """A text encoder config with the generated tokenizer's special tokens (ids stay inside the
    vocabulary)."""
    return CLIPTextConfig(
        **config, bos_token_id=len(tokenizer) - 2, eos_token_id=len(tokenizer) - 1, pad_token_id=len(tokenizer) - 1,
    )


def _build_small(workdir: str, seed: int) -> dict:
    parts = build_components(workdir, unet_size="small", seed=seed)
    return {k: parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet")}


def _build_sd21(workdir: str, seed: int) -> dict:
    tokenizer = build_tokenizer(workdir)
    torch.manual_seed(seed)
    return dict(
        tokenizer=tokenizer,
        unet=UNet2DConditionModel(**SD21_UNET_CONFIG),
        vae=AutoencoderKL(**SD21_VAE_CONFIG),
        text_encoder=CLIPTextModel(_clip_config(SD21_TEXT_ENCODER_CONFIG, tokenizer)),
    )


def _build_small_xl(workdir: str, seed: int) -> dict:
    tokenizer = build_tokenizer(workdir)
    width_1, width_2 = SMALL_XL_TEXT_WIDTHS
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**SMALL_XL_UNET_CONFIG)
    randomize_zero_parameters(unet, seed=seed)  # as the tiny models: no zero-initialised shortcut
    vae = build_vae(seed)  # tiue.testing.tiny's: factor 4, like "small"'s
    vae.register_to_config(scaling_factor=SDXL_VAE_CONFIG["scaling_factor"], force_upcast=True)
    return dict(
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        vae=vae,
        text_encoder=build_text_encoder(len(tokenizer), hidden_size=width_1, seed=seed),
        text_encoder_2=build_text_encoder_2(len(tokenizer), hidden_size=width_2, projection_dim=width_2, seed=seed + 1),
    )


def _build_sdxl(workdir: str, seed: int) -> dict:
    tokenizer = build_tokenizer(workdir)
    torch.manual_seed(seed)
    return dict(
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=UNet2DConditionModel(**SDXL_UNET_CONFIG),
        vae=AutoencoderKL(**SDXL_VAE_CONFIG),
        text_encoder=CLIPTextModel(_clip_config(SDXL_TEXT_ENCODER_CONFIG, tokenizer)),
        text_encoder_2=CLIPTextModelWithProjection(_clip_config(SDXL_TEXT_ENCODER_2_CONFIG, tokenizer)),
    )


_BUILDERS = {"small": _build_small, "sd21": _build_sd21, "small-xl": _build_small_xl, "sdxl": _build_sdxl}
# Initialised on the target device: much faster than on the CPU for a billion parameters or more.
# (The small scales' builders draw from CPU generators, so they build on the CPU.)
_BUILT_ON_DEVICE = ("sd21", "sdxl")
_MODULES = ("vae", "text_encoder", "text_encoder_2", "unet")


def build_models(scale: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Models:
    _check_scale(scale)
    workdir = tempfile.mkdtemp(prefix=f"tiue-bench-{scale}-")
    with torch.device(device) if scale in _BUILT_ON_DEVICE else contextlib.nullcontext():
        parts = _BUILDERS[scale](workdir, seed)
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting random weights needs no fp32-module advice
    try:
        for name in _MODULES:
            if name in parts:
                parts[name] = parts[name].to(device=device, dtype=dtype).eval().requires_grad_(False)
    finally:
        diffusers_logging.set_verbosity(verbosity)
    models = Models(
        scale=scale, scheduler_config=dict(SD21_SCHEDULER_CONFIG), device=torch.device(device), dtype=dtype, **parts,
    )
    if models.is_xl:
        check_xl_added_embedding(models.unet, models.text_encoder_2.config.projection_dim)
    return models
