"""Models that ship inside the package, addressed by short names such as "shapes".

Each is a pipeline folder under tiue/embedded/NAME (safetensors weights), loadable offline.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["EMBEDDED_DIR", "DEFAULT_MODEL", "embedded_models", "resolve_model"]

EMBEDDED_DIR = Path(__file__).parent / "embedded"
DEFAULT_MODEL = "shapes"


def embedded_models() -> dict[str, Path]:
    """Name -> folder of every embedded pipeline present in this installation."""
    if not EMBEDDED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(EMBEDDED_DIR.iterdir()) if (p / "model_index.json").is_file()}


def resolve_model(name_or_path: str) -> str:
    """An embedded model's folder for its short name; anything else is returned unchanged
    (a local folder wins over an embedded name, as a path the user typed should)."""
    if Path(name_or_path).exists():
        return name_or_path
    embedded = embedded_models()
    return str(embedded[name_or_path]) if name_or_path in embedded else name_or_path


def model_or_default(model: str | None, name: str = "--model") -> str:
    """`model`, or the embedded default when it is None (not given). An empty string is an
    error, never the default: a variable that expanded to nothing should not sample another model."""
    if model is not None and not str(model).strip():
        raise ValueError(f"{name}: got an empty string; pass a hub id, a local pipeline folder or an embedded model's name")
    model = model if model is not None else default_model()
    if model is None:
        raise ValueError(
            f"{name}: required (this installation has no embedded default model); pass a hub id such "
            "as 'senmaonk/loopfree-sd2.1-base' or a local pipeline folder"
        )
    return model


def default_model() -> str | None:
    """The embedded default model's name, if this installation has it."""
    return DEFAULT_MODEL if DEFAULT_MODEL in embedded_models() else None
