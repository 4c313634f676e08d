"""tiue: loop-free one-pass text-to-image sampling with the Time-independent Unified Encoder.

The public names load on first use (PEP 562), so `import tiue` and `tiue --help` stay cheap and
importing a submodule (say, tiue.devices) does not pull in torch's compiler stack or diffusers.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "EncoderFeatures": "tiue.unet",
    "TiUECrossAttnProcessor": "tiue.attention",
    "TiUEPipeline": "tiue.pipeline",
    "TiUEPipelineOutput": "tiue.pipeline",
    "TiUEUNet": "tiue.unet",
    "TiUEXLPipeline": "tiue.pipeline_xl",
    "interpolate_prompts": "tiue.interpolation",
    "loopfree_coefficients": "tiue.schedule",
    "sample": "tiue.sampling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tiue' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
