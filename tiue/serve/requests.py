"""What a client may ask `tiue serve` for, checked before any work: a `GenerateRequest`, or a
`RequestError` whose one line names the field, the value received and what is accepted.

The checks are the same for the web page and the HTTP API, and nothing a client sends names a
file on the server: a request is prompts, numbers and nothing else.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FIELDS", "GenerateRequest", "Limits", "ModelBounds", "RequestError", "parse_json", "parse_request"]

# torch seeds are 64-bit; image i of a request is seeded with seed + i.
MAX_SEED = 2**63 - 1
FIELDS = ("prompt", "negative_prompt", "seed", "count", "steps", "height", "width")


class RequestError(ValueError):
    """A client error: one line, answered with HTTP 4xx (or shown in the page)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """Per-request bounds (flags of `tiue serve`)."""

    max_prompt_chars: int = 1000
    max_images: int = 16
    max_pixels: int = 16 * 512 * 512  # summed over a request's images
    max_steps: int = 16  # K: a pass runs K decoders per image
    max_body_bytes: int = 256 * 1024


@dataclass(frozen=True)
class ModelBounds:
    """What the served model accepts: its default image size, the size multiple (the VAE's
    downsampling factor), K's default, whether it samples with guidance (then a request may
    carry a negative prompt), and `steps_error(K)`: why the model's schedule refuses K, or None."""

    default_size: int
    size_multiple: int
    default_steps: int = 4
    guided: bool = False
    steps_error: Callable[[int], str | None] = lambda steps: None


@dataclass(frozen=True)
class GenerateRequest:
    """One client's images: image i is `prompts[i]` seeded with `seeds[i]`, the way `tiue sample`
    seeds prompt i of its list with seed + i; with guidance, steered away from `negative_prompt`
    ("" when none was given)."""

    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    steps: int
    height: int
    width: int
    negative_prompt: str = ""

    @property
    def count(self) -> int:
        return len(self.prompts)

    def batch_key(self) -> tuple[int, int, int]:
        """Images with equal keys can share one pipeline call."""
        return (self.steps, self.height, self.width)


def parse_json(body: bytes, limits: Limits) -> dict:
    """The request body as a JSON object, or a RequestError saying what is wrong with it."""
    if len(body) > limits.max_body_bytes:
        raise RequestError(f"request body: {len(body)} bytes, at most {limits.max_body_bytes} accepted", status=413)
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise RequestError("request body: not UTF-8 text; send a JSON object") from None
    except ValueError as error:
        raise RequestError(f"request body: malformed JSON ({error}); send a JSON object such as "
                           '{"prompt": "a red circle", "seed": 0}') from None
    if not isinstance(payload, dict):
        raise RequestError(f"request body: expected a JSON object, got {type(payload).__name__}")
    return payload


def _integer(payload: dict, name: str, default: int, low: int, high: int, note: str = "") -> int:
    value = payload.get(name)
    if value is None:
        return default
    # JSON 3.0 arrives as a float; accept it when it is whole, refuse 3.5, "3" and true.
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**64:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(f"{name}: expected an integer {low}..{high}{note}, got {_show(value)}")
    if not low <= value <= high:
        raise RequestError(f"{name}: expected {low} <= {name} <= {high}{note}, got {_show(value)}")
    return value


def _show(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _prompts(payload: dict, limits: Limits) -> list[str]:
    prompt = payload.get("prompt")
    if prompt is None:
        raise RequestError('prompt: required; send {"prompt": "a red circle"} or a list of prompts')
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise RequestError(f"prompt: expected a string or a list of strings, got {_show(prompt)}")
    if not prompts or len(prompts) > limits.max_images:
        raise RequestError(f"prompt: expected 1 to {limits.max_images} prompts, got {len(prompts)}")
    for i, text in enumerate(prompts):
        name = "prompt" if isinstance(prompt, str) else f"prompt[{i}]"
        if not text.strip():
            raise RequestError(f"{name}: empty; describe the image, e.g. \"a red circle\"")
        if len(text) > limits.max_prompt_chars:
            raise RequestError(f"{name}: {len(text)} characters, at most {limits.max_prompt_chars} accepted")
        if "\x00" in text:
            raise RequestError(f"{name}: contains a NUL character")
    return prompts


def _negative_prompt(payload: dict, limits: Limits, model: ModelBounds) -> str:
    negative = payload.get("negative_prompt")
    if negative is None:
        return ""
    if not model.guided:
        raise RequestError("negative_prompt: this server samples without guidance (a distilled student's way); "
                           "start it with --guidance-scale above 1 to use one")
    if not isinstance(negative, str):
        raise RequestError(f"negative_prompt: expected a string, got {_show(negative)}")
    if len(negative) > limits.max_prompt_chars:
        raise RequestError(f"negative_prompt: {len(negative)} characters, at most {limits.max_prompt_chars} accepted")
    if "\x00" in negative:
        raise RequestError("negative_prompt: contains a NUL character")
    return negative


def parse_request(payload: dict, limits: Limits, model: ModelBounds) -> GenerateRequest:
    """Check a request (a JSON object: prompt, negative_prompt, seed, count, steps, height, width).

    `prompt` is a string or a list of strings; `count` (default 1) images are made of each, a
    prompt's copies adjacent; image i of the whole request is seeded with seed + i.
    """
    unknown = sorted(set(payload) - set(FIELDS))
    if unknown:
        raise RequestError(f"{unknown[0]}: unknown field; accepted: {', '.join(FIELDS)}")
    prompts = _prompts(payload, limits)
    negative = _negative_prompt(payload, limits, model)
    count = _integer(payload, "count", 1, 1, limits.max_images, " images per prompt")
    if count * len(prompts) > limits.max_images:
        raise RequestError(f"count: {count} images of {len(prompts)} prompts is {count * len(prompts)} images, "
                           f"at most {limits.max_images} per request accepted")
    total = count * len(prompts)
    seed = _integer(payload, "seed", 0, 0, MAX_SEED - total + 1, " (image i uses seed + i)")
    steps = _integer(payload, "steps", model.default_steps, 1, limits.max_steps, " (K, the decoder steps)")
    refused = model.steps_error(steps)
    if refused:
        raise RequestError(f"steps: {refused}")
    sizes = {}
    for name in ("height", "width"):
        size = _integer(payload, name, model.default_size, model.size_multiple, 4096)
        if size % model.size_multiple:
            raise RequestError(f"{name}: expected a multiple of {model.size_multiple} (the VAE's downsampling), got {size}")
        sizes[name] = size
    pixels = total * sizes["height"] * sizes["width"]
    if pixels > limits.max_pixels:
        raise RequestError(f"height, width: {total} images of {sizes['height']}x{sizes['width']} are {pixels} pixels, "
                           f"at most {limits.max_pixels} per request accepted")
    expanded = tuple(p for p in prompts for _ in range(count))
    return GenerateRequest(expanded, tuple(range(seed, seed + total)), steps, sizes["height"], sizes["width"], negative)
