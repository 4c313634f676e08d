"""Small Stable-Diffusion-shaped pipelines built in code, for tests and benchmarks.

No weights can be downloaded on the machines this project is tested on, so every model
here is built from a config with random weights, and the tokenizer from a generated
byte-level vocabulary. The block structure follows SD 1.x / 2.x.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from tiue.schedule import SD21_SCHEDULER_CONFIG
from tiue.world.tokenizer import byte_level_alphabet

__all__ = [
    "SD21_SCHEDULER_CONFIG",
    "build_tokenizer",
    "build_text_encoder",
    "build_unet",
    "build_vae",
    "build_components",
    "save_tiny_pipeline",
    "randomize_zero_parameters",
]

# UNet sizes by name: "tiny" for unit tests, "small" for CPU benchmarks (SD-shaped, 4 levels).
UNET_SIZES = {
    "tiny": dict(
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    "small": dict(
        block_out_channels=(64, 128, 256, 256),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
}


def build_tokenizer(directory: str | Path) -> CLIPTokenizer:
    """A CLIP tokenizer over the 256 byte characters (each also with `</w>`), no merges."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    chars = byte_level_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (directory / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(tokens)}))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer.from_pretrained(str(directory), model_max_length=77)


def tiny_text_config(vocab_size: int, hidden_size: int = 32, **extra) -> CLIPTextConfig:
    """A 2-layer CLIP text config over the generated tokenizer (its last ids are the specials)."""
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        bos_token_id=vocab_size - 2,
        eos_token_id=vocab_size - 1,
        pad_token_id=vocab_size - 1,
        **extra,
    )


def build_text_encoder(vocab_size: int, hidden_size: int = 32, seed: int = 0) -> CLIPTextModel:
    torch.manual_seed(seed)
    return CLIPTextModel(tiny_text_config(vocab_size, hidden_size)).eval()


def build_unet(
    size: str = "tiny",
    cross_attention_dim: int = 32,
    use_linear_projection: bool = False,
    sample_size: int = 8,
    seed: int = 0,
    randomize_zeros: bool = True,
) -> UNet2DConditionModel:
    """A UNet2DConditionModel with SD's block structure at a small size.

    `randomize_zeros` replaces diffusers' zero-initialised output projections with small random
    values, so that no path of the network is hidden from an equivalence test.
    """
    if size not in UNET_SIZES:
        raise ValueError(f"size: expected one of {', '.join(UNET_SIZES)}, got {size!r}")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        cross_attention_dim=cross_attention_dim,
        use_linear_projection=use_linear_projection,
        **UNET_SIZES[size],
    )
    if randomize_zeros:
        randomize_zero_parameters(unet, seed=seed)
    return unet.eval()


def build_vae(seed: int = 0) -> AutoencoderKL:
    """A 3-level VAE (downsampling factor 4) with SD's latent layout (4 channels)."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 32),
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=0.18215,
    )
    return vae.eval()


def randomize_zero_parameters(module: torch.nn.Module, seed: int = 0, std: float = 0.02) -> int:
    """Give every all-zero parameter small random values; returns how many were changed."""
    generator = torch.Generator().manual_seed(seed)
    changed = 0
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * std)
                changed += 1
    return changed


def build_components(
    directory: str | Path,
    unet_size: str = "tiny",
    prediction_type: str = "epsilon",
    use_linear_projection: bool = False,
    scheduler_class: type = PNDMScheduler,
    seed: int = 0,
) -> dict:
    """The five components of an SD pipeline (tokenizer files are written under `directory`)."""
    tokenizer = build_tokenizer(Path(directory) / "tokenizer_files")
    text_encoder = build_text_encoder(len(tokenizer), seed=seed)
    unet = build_unet(
        unet_size,
        cross_attention_dim=text_encoder.config.hidden_size,
        use_linear_projection=use_linear_projection,
        seed=seed,
    )
    # from_config keeps keys the class does not take (clip_sample for PNDM), as a real
    # checkpoint's scheduler_config.json does.
    scheduler = scheduler_class.from_config(dict(SD21_SCHEDULER_CONFIG, prediction_type=prediction_type))
    return dict(
        vae=build_vae(seed),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
    )


def save_tiny_pipeline(directory: str | Path, **kwargs) -> Path:
    """Write a StableDiffusionPipeline folder (model_index naming StableDiffusionPipeline, with
    null safety checker / feature extractor entries), as a user's SD checkpoint looks."""
    from diffusers import StableDiffusionPipeline

    directory = Path(directory)
    components = build_components(directory.parent / f".{directory.name}-build", **kwargs)
    pipe = StableDiffusionPipeline(
        **components, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )
    pipe.save_pretrained(directory, safe_serialization=True)
    return directory
