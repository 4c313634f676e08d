"""tiue: loop-free one-pass text-to-image sampling with the Time-independent Unified Encoder.

The public names load on first use (PEP 562), so `import tiue` and `tiue --help` stay cheap and
importing a submodule (say, tiue.devices) does not pull in torch's compiler stack or diffusers.
Subpackages and submodules are attributes too, imported on first access: after `import tiue`,
`tiue.ops.backend_info()` works without `import tiue.ops`.
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


def _submodules() -> set[str]:
    """The public submodules and subpackages (tiue.ops, tiue.eval, tiue.devices, ...), by listing
    the package folder: nothing is imported."""
    import pkgutil

    return {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif not name.startswith("_") and name in _submodules():
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module 'tiue' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS) | _submodules())
