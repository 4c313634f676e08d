"""`tiue.sample`: one call from a prompt to images, with pipelines cached per model/device/dtype."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import torch

from tiue.arguments import check_seed
from tiue.devices import resolve_device, resolve_dtype
from tiue.embedded import model_or_default

__all__ = ["clear_pipeline_cache", "load_pipeline", "pipeline_class_for", "sample"]

_CACHE: dict[tuple[str, str, torch.dtype, bool], object] = {}
_CACHE_LOCK = threading.Lock()


def pipeline_class_for(model: str) -> type:
    """TiUEXLPipeline for an SDXL-class folder (its model_index.json names StableDiffusionXLPipeline
    or TiUEXLPipeline, or has text_encoder_2), else TiUEPipeline. Hub ids are not inspected
    offline: they load as TiUEPipeline (use TiUEXLPipeline.from_pretrained for an SDXL hub id)."""
    from tiue.embedded import resolve_model
    from tiue.pipeline import TiUEPipeline
    from tiue.pipeline_xl import TiUEXLPipeline, is_xl_model_index

    index_path = Path(resolve_model(model)) / "model_index.json"
    try:
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
    except (OSError, ValueError):
        index = {}  # loading reports the broken index
    return TiUEXLPipeline if isinstance(index, dict) and is_xl_model_index(index) else TiUEPipeline


def load_pipeline(model: str, device: str | torch.device | None = None, dtype=None, fast: bool = False):
    """A TiUEPipeline (TiUEXLPipeline for an SDXL folder) for `model` (hub id or local folder) on
    `device` in `dtype`, cached; `fast` enables the compiled (and on CUDA, graph-captured) fast path."""
    if not isinstance(model, str) or not model:
        raise ValueError(f"model: expected a hub id or a local pipeline folder, got {model!r}")
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    key = (model, str(device), dtype, bool(fast))
    with _CACHE_LOCK:
        if key not in _CACHE:
            # Cast after loading: the from_pretrained dtype keyword changed name across diffusers.
            pipe = pipeline_class_for(model).from_pretrained(model).to(device=device, dtype=dtype)
            pipe.set_progress_bar_config(disable=True)
            if fast:
                pipe.enable_fast_path()
            _CACHE[key] = pipe
        return _CACHE[key]


def clear_pipeline_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


def sample(
    prompt: str | list[str],
    model: str | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    fast: bool = False,
    **pipeline_kwargs,
):
    """Generate images for `prompt` in one pass; returns a list of PIL images.

    Args:
        prompt: a prompt or a list of prompts.
        model: a hub id or a local folder of a TiUE-distilled SD 1.x / 2.x pipeline (or SDXL
            folder, sampled with TiUEXLPipeline), or an embedded model's name; default: the
            embedded default model, when installed.
        seed: seeds the initial noise (one generator on the sampling device).
        device: "cuda", "cpu", ...; default CUDA when available, else CPU.
        dtype: "fp16", "bf16", "fp32" or a torch dtype; default fp16 on CUDA, fp32 elsewhere.
        fast: use the fast path (torch.compile, and CUDA graphs on CUDA); the first call of
            each new shape pays the compile.
        **pipeline_kwargs: passed to the pipeline's `__call__` (num_inference_steps, height, ...).
    """
    if seed is not None:  # before the model loads
        check_seed("seed", seed)
        if "generator" in pipeline_kwargs:
            raise ValueError("seed, generator: pass one of them, not both")
    model = model_or_default(model, "model")
    pipe = load_pipeline(model, device, dtype, fast)
    if seed is not None:
        pipeline_kwargs["generator"] = torch.Generator(pipe.device).manual_seed(seed)
    return pipe(prompt, **pipeline_kwargs).images
