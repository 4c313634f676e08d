"""The models every row runs on, at each scale, with random weights.

Latency does not depend on weight values, so no checkpoint is needed: "small" is the
SD-shaped CPU model of `tiue.testing.tiny`, "sd21" the Stable Diffusion 2.1-base
architecture (UNet, VAE and OpenCLIP-H text encoder shapes), written out here.
"""

from __future__ import annotations

import copy
import tempfile
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
from diffusers.utils import logging as diffusers_logging
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tiue.testing.tiny import SD21_SCHEDULER_CONFIG, build_components, build_tokenizer

__all__ = ["SCALES", "Models", "build_models", "default_image_size"]

SCALES = ("small", "sd21")

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


@dataclass
class Models:
    """One set of weights; rows that change modules in place work on `copy()`s of it."""

    scale: str
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    unet: UNet2DConditionModel
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype

    def ddim_scheduler(self) -> DDIMScheduler:
        return DDIMScheduler.from_config(self.scheduler_config)

    def components(self) -> dict:
        """The five pipeline components, sharing these modules."""
        return dict(
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self.tokenizer,
            unet=self.unet,
            scheduler=self.ddim_scheduler(),
        )

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
        )

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def parameter_bytes(self) -> int:
        modules = (self.vae, self.text_encoder, self.unet)
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())


def default_image_size(scale: str) -> int:
    """Pixels per side: 32x32 latents at the small scale (VAE factor 4), 512 px for sd21."""
    return {"small": 128, "sd21": 512}[_check_scale(scale)]


def _check_scale(scale: str) -> str:
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {', '.join(SCALES)}, got {scale!r}")
    return scale


def build_models(scale: str, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Models:
    _check_scale(scale)
    workdir = tempfile.mkdtemp(prefix=f"tiue-bench-{scale}-")
    if scale == "small":
        parts = build_components(workdir, unet_size="small", seed=seed)
        vae, text_encoder, tokenizer, unet = (parts[k] for k in ("vae", "text_encoder", "tokenizer", "unet"))
    else:
        tokenizer = build_tokenizer(workdir)
        torch.manual_seed(seed)
        # Initialising on the target device is much faster than on the CPU for 1.3B parameters.
        with torch.device(device):
            unet = UNet2DConditionModel(**SD21_UNET_CONFIG)
            vae = AutoencoderKL(**SD21_VAE_CONFIG)
            text_encoder = CLIPTextModel(
                CLIPTextConfig(
                    **SD21_TEXT_ENCODER_CONFIG,
                    # The generated tokenizer's special tokens; ids stay inside the vocabulary.
                    bos_token_id=len(tokenizer) - 2,
                    eos_token_id=len(tokenizer) - 1,
                    pad_token_id=len(tokenizer) - 1,
                )
            )
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # casting random weights needs no fp32-module advice
    try:
        vae, text_encoder, unet = (
            m.to(device=device, dtype=dtype).eval().requires_grad_(False) for m in (vae, text_encoder, unet)
        )
    finally:
        diffusers_logging.set_verbosity(verbosity)
    return Models(
        scale=scale,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler_config=dict(SD21_SCHEDULER_CONFIG),
        device=torch.device(device),
        dtype=dtype,
    )
