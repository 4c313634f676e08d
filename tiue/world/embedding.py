"""Copy a trained model into tiue/embedded/NAME, the folder `TiUEPipeline.from_pretrained(NAME)`
and `tiue.eval` read offline.

A pipeline folder is copied as its model_index.json lists it: training artefacts that a trainer
leaves beside the components (raw weights, LoRA adapters) stay behind. With fp16, the UNet, the
VAE, the text encoder and a feature network are stored in float16 and load back as float32:
diffusers and our loader cast them, and transformers loads the dtype the text encoder's
config.json records (float32 for the world's trained encoders), not the file's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from safetensors.torch import load_file, save_file

from tiue.embedded import EMBEDDED_DIR
from tiue.files import atomic_directory
from tiue.model_card import CARD_FILE, card_base_model, rename_card

__all__ = ["embed_model", "HALF_PRECISION_FOLDERS"]

# Folders (relative to the model folder) whose weights may be stored in float16.
HALF_PRECISION_FOLDERS = ("unet", "vae", "text_encoder", ".")


def embed_model(
    source: str | Path, name: str, fp16: bool = False, root: Path = EMBEDDED_DIR, overwrite: bool = False
) -> Path:
    """Copy `source` to root/name; an existing model of that name (a shipped one, say) is
    replaced only with overwrite=True."""
    source = Path(source)
    if not ((source / "model_index.json").is_file() or (source / "config.json").is_file()):
        raise ValueError(f"--source: expected a pipeline folder (model_index.json) or a feature-network folder (config.json), got {source}")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"--name: expected a plain folder name such as 'shapes', got {name!r}")
    target = root / name
    if target.exists() and not overwrite:
        raise ValueError(
            f"--name: {name!r} is already an embedded model ({target}); pass --overwrite to replace it, "
            "or choose another name"
        )
    components = _pipeline_components(source)
    with atomic_directory(target) as tmp:
        for item in source.rglob("*"):
            relative = item.relative_to(source)
            if item.is_dir() or any(part.startswith(".") for part in relative.parts):
                continue
            if components is not None and len(relative.parts) > 1 and relative.parts[0] not in components:
                continue
            destination = tmp / relative
            destination.parent.mkdir(parents=True, exist_ok=True)
            folder = str(relative.parent)
            if fp16 and item.suffix == ".safetensors" and folder in HALF_PRECISION_FOLDERS:
                state = load_file(str(item))
                save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(destination))
            else:
                shutil.copy2(item, destination)
        card = tmp / CARD_FILE
        if card.is_file():  # written for the run's folder (say, runs/x/final): it should name the model
            text = card.read_text()
            card.write_text(rename_card(text, name, _embedded_name(card_base_model(text), root)))
    return target


def _embedded_name(base_model: str | None, root: Path) -> str | None:
    """The embedded name of a base model that is itself embedded under `root` (its folder path
    only resolves inside a source checkout; the name resolves everywhere), else None."""
    if base_model is None:
        return None
    path = Path(base_model)
    return path.name if path.is_dir() and path.resolve().parent == Path(root).resolve() else None


def _pipeline_components(source: Path) -> set[str] | None:
    """The component folders a pipeline's model_index.json names (None for other folders)."""
    index_path = source / "model_index.json"
    if not index_path.is_file():
        return None
    index = json.loads(index_path.read_text())
    return {k for k, v in index.items() if isinstance(v, list) and v and v[0] is not None}
