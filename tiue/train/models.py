"""The networks of a distillation run, loaded and set up as the official recipe sets them up.

- The frozen teacher and the LoRA "fake-score" teacher are ONE UNet with a peft LoRA adapter
  (as the paper's code holds them). Its frozen base weights stay fp32 and run under autocast,
  as the official script keeps them (--half-precision-teacher casts them to the mixed dtype);
  the LoRA weights are fp32 for their optimizer.
- The student is a TiUEUNet over its own fp32 UNet, initialised from the teacher's weights
  (or from --student).
- Frozen: the text encoder(s) in the mixed-precision dtype, the VAE in fp32 (as the official
  script: SD's VAE overflows in fp16).
- SDXL-class teachers (addition_embed_type="text_time") bring a second tokenizer and text
  encoder and their pipeline's force_zeros_for_empty_prompt; the UNets are handled alike.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel

from tiue.unet import TiUEUNet, check_splittable

__all__ = [
    "TeacherParts",
    "LORA_ADAPTER",
    "BASE_ADAPTER",
    "is_xl_unet",
    "load_xl_text_parts",
    "load_teacher_parts",
    "load_student",
    "add_fake_score_lora",
    "lora_state_dict",
    "load_lora_state_dict",
    "per_sample_adapters",
]

LORA_ADAPTER = "fake_score"
BASE_ADAPTER = "__base__"  # peft's name for "no adapter" in a mixed batch


@dataclass
class TeacherParts:
    tokenizer: object
    text_encoder: torch.nn.Module
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    scheduler: DDIMScheduler
    # SDXL-class teachers only (None otherwise):
    tokenizer_2: object | None = None
    text_encoder_2: torch.nn.Module | None = None
    force_zeros_for_empty_prompt: bool | None = None

    @property
    def is_xl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def tokenizers(self) -> tuple:
        return (self.tokenizer,) if not self.is_xl else (self.tokenizer, self.tokenizer_2)

    @property
    def text_encoders(self) -> tuple:
        return (self.text_encoder,) if not self.is_xl else (self.text_encoder, self.text_encoder_2)


def is_xl_unet(unet: UNet2DConditionModel) -> bool:
    """Whether the UNet takes SDXL's added conditions (pooled text embedding and time ids)."""
    return unet.config.get("addition_embed_type") == "text_time"


def _component_class(model: str, component: str) -> str | None:
    """The class model_index.json names for `component` of a local pipeline folder, if any."""
    index = Path(model) / "model_index.json"
    if not index.is_file():
        return None
    entry = json.loads(index.read_text()).get(component)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None


def _options(revision: str | None, variant: str | None) -> dict[str, str]:
    """from_pretrained's revision and variant, those given (--revision, --variant)."""
    return {k: v for k, v in (("revision", revision), ("variant", variant)) if v is not None}


def _load_unet(model: str, flag: str, **options) -> UNet2DConditionModel:
    named = _component_class(model, "unet")
    if named is not None and named != "UNet2DConditionModel":
        raise TypeError(
            f"{flag}: {model} holds a {named}, not a Stable Diffusion UNet2DConditionModel"
        )
    try:
        subfolder = "unet" if not (Path(model) / "config.json").is_file() else None
        unet = UNet2DConditionModel.from_pretrained(model, subfolder=subfolder, **options)
    except (OSError, ValueError, EnvironmentError) as error:
        raise ValueError(f"{flag}: cannot load a UNet from {model!r}: {str(error).splitlines()[0]}") from None
    try:
        check_splittable(unet)
    except (TypeError, NotImplementedError) as error:
        raise type(error)(f"{flag}: {model} is not a UNet tiue can split (SD 1.x/2.x or SDXL-class): {error}") from None
    return unet


def load_teacher_parts(
    teacher: str, weight_dtype: torch.dtype, unet_dtype: torch.dtype = torch.float32, *,
    revision: str | None = None, variant: str | None = None,
) -> TeacherParts:
    """Tokenizer, text encoder, VAE and UNet of an SD 1.x/2.x or SDXL pipeline (hub id or
    folder), frozen: the text encoder(s) in `weight_dtype`, the VAE in fp32, the UNet in
    `unet_dtype`; the scheduler as a DDIMScheduler built from its config. `revision` and
    `variant` go to every from_pretrained (the tokenizer and scheduler have no weight files, so
    no variant)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    from tiue.embedded import resolve_model

    teacher = resolve_model(teacher)
    if not Path(teacher).exists() and teacher.startswith((".", "/")):
        raise ValueError(f"--teacher: no such folder: {teacher}")
    options = _options(revision, variant)
    unet = _load_unet(teacher, "--teacher", **options)
    try:
        tokenizer = CLIPTokenizer.from_pretrained(teacher, subfolder="tokenizer", **_options(revision, None))
        text_encoder = CLIPTextModel.from_pretrained(teacher, subfolder="text_encoder", **options)
        vae = AutoencoderKL.from_pretrained(teacher, subfolder="vae", **options)
        scheduler = DDIMScheduler.from_config(
            DDIMScheduler.load_config(teacher, subfolder="scheduler", **_options(revision, None))
        )
        xl = load_xl_text_parts(teacher, revision, options) if is_xl_unet(unet) else {}
    except (OSError, ValueError) as error:
        expected = "tokenizer, text_encoder, vae, scheduler, unet" + (", tokenizer_2, text_encoder_2" if is_xl_unet(unet) else "")
        raise ValueError(
            f"--teacher: {teacher!r} is not a Stable Diffusion{' XL' if is_xl_unet(unet) else ''} pipeline "
            f"({expected}): {str(error).splitlines()[0]}"
        ) from None
    if xl:
        from tiue.pipeline_xl import check_xl_added_embedding

        check_xl_added_embedding(unet, xl["text_encoder_2"].config.projection_dim, flag="--teacher")
    text_encoders = [text_encoder] + ([xl["text_encoder_2"]] if xl else [])
    for module, dtype in [*((m, weight_dtype) for m in text_encoders), (vae, torch.float32), (unet, unet_dtype)]:
        module.requires_grad_(False)
        module.eval()
        if module.dtype != dtype:  # (casting to the same dtype only prints warnings)
            module.to(dtype=dtype)
    return TeacherParts(tokenizer, text_encoder, vae, unet, scheduler, **xl)


def load_xl_text_parts(teacher: str, revision: str | None, options: dict) -> dict:
    """An SDXL pipeline's second tokenizer and text encoder, and its force_zeros_for_empty_prompt
    (model_index.json; diffusers' default, True, when the file does not say)."""
    from diffusers import DiffusionPipeline
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer

    text_encoder_2 = CLIPTextModelWithProjection.from_pretrained(teacher, subfolder="text_encoder_2", **options)
    tokenizer_2 = CLIPTokenizer.from_pretrained(teacher, subfolder="tokenizer_2", **_options(revision, None))
    index = DiffusionPipeline.load_config(teacher, **_options(revision, None))
    return dict(
        tokenizer_2=tokenizer_2,
        text_encoder_2=text_encoder_2,
        force_zeros_for_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", True)),
    )


def load_student(
    student: str | None, teacher_unet: UNet2DConditionModel, teacher: str, *,
    revision: str | None = None, variant: str | None = None,
) -> TiUEUNet:
    """The student: a TiUEUNet over an fp32 UNet from --student, or the teacher's weights."""
    from tiue.embedded import resolve_model

    unet = _load_unet(
        resolve_model(student or teacher), "--student" if student else "--teacher", **_options(revision, variant)
    )
    # Keys starting with "_" record where and with what a config was saved, not the architecture.
    differing = sorted(
        k for k in set(unet.config) | set(teacher_unet.config)
        if not k.startswith("_") and unet.config.get(k) != teacher_unet.config.get(k)
    )
    if student is not None and differing:
        raise ValueError(
            f"--student: its UNet config differs from the teacher's in {', '.join(differing[:5])}; "
            "the student must have the teacher's architecture"
        )
    if unet.dtype != torch.float32:  # fp32 master weights
        unet.to(dtype=torch.float32)
    unet.requires_grad_(True)
    unet.train()
    return TiUEUNet(unet)


def add_fake_score_lora(
    unet: UNet2DConditionModel, rank: int, alpha: float, targets, init: str = "default"
) -> list[torch.nn.Parameter]:
    """Attach the fake-score LoRA to the (frozen) teacher UNet; returns its fp32 parameters.

    init "default" is peft's default (A Kaiming-uniform, B zero), as the official script;
    "gaussian" draws A from N(0, 1/rank). Either way B starts at zero, so the fake score
    starts equal to the teacher."""
    from peft import LoraConfig

    init_lora_weights = {"default": True, "gaussian": "gaussian"}[init]
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets), init_lora_weights=init_lora_weights)
    try:
        unet.add_adapter(config, adapter_name=LORA_ADAPTER)
    except ValueError as error:
        raise ValueError(f"--lora-targets: {','.join(targets)} matched no layer of the teacher UNet ({error})") from None
    params = [p for n, p in unet.named_parameters() if f".{LORA_ADAPTER}." in n]
    for p in params:
        p.data = p.data.float()
        p.requires_grad_(True)
    return params


def lora_state_dict(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in unet.named_parameters() if f".{LORA_ADAPTER}." in n}


def load_lora_state_dict(unet: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    params = dict(unet.named_parameters())
    expected = {n for n in params if f".{LORA_ADAPTER}." in n}
    if expected != set(state):
        raise ValueError(
            f"LoRA state: expected {len(expected)} LoRA weights, the checkpoint holds {len(state)} "
            "(was it written with other --lora-rank/--lora-targets?)"
        )
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value)


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def per_sample_adapters(unet: torch.nn.Module, adapter_names: list[str]):
    """Run `unet` with the adapter chosen per sample: BASE_ADAPTER rows get the frozen teacher,
    LORA_ADAPTER rows the fake-score teacher, all in one batched pass.

    peft's LoRA layers take an `adapter_names` keyword ("mixed adapter batches"): the base layer
    runs on the whole batch and each adapter's low-rank update is added to its rows only, the
    same sum as a separate pass per adapter. This hooks that keyword into every LoRA layer.
    """
    from peft.tuners.lora import LoraLayer

    hook = partial(_inject_adapter_names, adapter_names=adapter_names)
    handles = [
        m.register_forward_pre_hook(hook, with_kwargs=True) for m in unet.modules() if isinstance(m, LoraLayer)
    ]
    if not handles:
        raise ValueError("per_sample_adapters: the UNet has no LoRA layer")
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
