"""OUTPUT/final: a pipeline folder TiUEPipeline.from_pretrained loads, written atomically.

    final/                 a TiUEPipeline folder (TiUEXLPipeline for an SDXL teacher) with a README.md model card
    final/unet             the student's EMA weights (what users sample with)
    final/unet_raw         the student's raw weights, a UNet2DConditionModel folder
    final/lora             the fake-score LoRA adapter (diffusers/peft format)
    final/tiue_training.json  the run's settings and final step

Text encoder, tokenizer and VAE are re-read from the teacher in their stored precision,
not taken from the run (which may hold them in bf16/fp16).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from tiue.files import atomic_directory
from tiue.train.ema import EMA
from tiue.train.models import LORA_ADAPTER, is_xl_unet, load_xl_text_parts

__all__ = ["export_final"]


def _unet_with(weights: dict[str, torch.Tensor], config) -> UNet2DConditionModel:
    unet = UNet2DConditionModel.from_config(config)
    missing, unexpected = unet.load_state_dict({k: v.detach().cpu().float() for k, v in weights.items()}, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"export: EMA weights do not fit the UNet (missing {missing[:3]}, unexpected {unexpected[:3]})")
    return unet


def export_final(
    output: str | Path,
    *,
    teacher: str,
    student_unet: UNet2DConditionModel,
    ema: EMA,
    fake_score_unet,
    scheduler,
    summary: dict,
    revision: str | None = None,
    variant: str | None = None,
) -> Path:
    """revision, variant: the teacher's, as the run loaded it (--revision, --variant)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from tiue.embedded import resolve_model
    from tiue.pipeline import TiUEPipeline
    from tiue.pipeline_xl import TiUEXLPipeline

    base_model = teacher
    teacher = resolve_model(teacher)
    output = Path(output)
    ema_unet = _unet_with(ema.state_dict(), student_unet.config)
    revision_only = {"revision": revision} if revision is not None else {}
    options = dict(revision_only, **({"variant": variant} if variant is not None else {}))
    components = dict(
        vae=AutoencoderKL.from_pretrained(teacher, subfolder="vae", **options),
        text_encoder=CLIPTextModel.from_pretrained(teacher, subfolder="text_encoder", **options),
        tokenizer=CLIPTokenizer.from_pretrained(teacher, subfolder="tokenizer", **revision_only),
        unet=ema_unet,
        scheduler=scheduler,
    )
    if is_xl_unet(ema_unet):
        pipe = TiUEXLPipeline(**components, **load_xl_text_parts(teacher, revision, options))
    else:
        pipe = TiUEPipeline(**components)
    with atomic_directory(output) as tmp:
        card = dict(name=str(output), base_model=base_model, num_steps=summary.get("config", {}).get("num_steps", 4),
                    training=summary)
        pipe.save_pretrained(tmp, safe_serialization=True, model_card=card)
        student_unet.save_pretrained(tmp / "unet_raw", safe_serialization=True)
        fake_score_unet.save_lora_adapter(tmp / "lora", adapter_name=LORA_ADAPTER, safe_serialization=True)
        (tmp / "tiue_training.json").write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    return output
