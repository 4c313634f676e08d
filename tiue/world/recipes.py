"""Recipes: one YAML file per shapes-world model, retrained with one command.

    tiue world train --config configs/shapes-teacher.yaml     # tokenizer, text encoder, VAE, teacher
    tiue world train --config configs/shapes-features.yaml    # the feature network

A recipe names its `job` and the settings of each part; missing settings take the defaults of
the dataclasses in the job's modules. The result lands in OUTPUT_DIR/final (a pipeline folder
for the teacher, a feature-network folder for the features), written atomically. A teacher
recipe may add a `teacher_finetune` section: a second training stage from the first stage's EMA
weights, with its own schedule settings (the shapes teacher moves its epsilon UNet to
v-prediction at zero terminal SNR this way). The distilled students are `tiue train` configs
(configs/shapes-tiue*.yaml, configs/shapes-vsd.yaml).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from tiue.data.shapes import WorldConfig
from tiue.world.checkpoints import StageCheckpoint
from tiue.files import atomic_directory, write_text_atomically
from tiue.world.recipe_settings import JOBS, check_recipe
from tiue.yaml_loading import load_settings_file

__all__ = ["JOBS", "load_recipe", "run_recipe", "RecipeResult"]

_STAGES = {"teacher": ("vae", "teacher", "teacher_finetune"), "features": ("features",)}


@dataclasses.dataclass
class RecipeResult:
    final: Path
    seconds: float


def load_recipe(path: str | Path) -> dict[str, Any]:
    """A recipe file, read as bounded plain YAML and checked key by key (tiue/world/recipe_settings.py)."""
    return check_recipe(load_settings_file(path, "--config"), str(path))


def _settings(cls, values: dict | None, name: str):
    """A settings dataclass from a YAML section (lists become tuples), naming unknown keys."""
    values = dict(values or {})
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - fields
    if unknown:
        raise ValueError(f"{name}: unknown settings {sorted(unknown)}; accepted: {sorted(fields)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


def run_recipe(
    recipe: dict[str, Any], overrides: dict[str, Any] | None = None, resume: bool = False, overwrite: bool = False
) -> RecipeResult:
    """Run a loaded recipe. overrides: top-level keys (output_dir) or 'section.key' values
    (teacher.steps), as `tiue world train --set` gives them.

    Each stage checkpoints into OUTPUT_DIR/checkpoints every few minutes. resume=True continues
    from there (with the same recipe); a folder holding a run is refused unless resume or
    overwrite is given. wall_time.txt counts this sitting and the training time of earlier ones."""
    import yaml

    from tiue.world.training import set_threads

    # Checked again with the overrides in, before anything is drawn, trained or written.
    recipe = check_recipe(_apply_overrides(recipe, overrides or {}), "the recipe with its --set values")
    set_threads(recipe.get("num_threads"))
    output_dir = Path(recipe.get("output_dir") or f"runs/shapes-{recipe['job']}")
    checkpoints = output_dir / "checkpoints"
    _check_resume(output_dir, recipe, resume, overwrite)
    write_text_atomically(output_dir / "recipe.yaml", yaml.safe_dump(recipe, sort_keys=False))
    start = time.perf_counter()
    final = output_dir / "final"
    stages = [StageCheckpoint(checkpoints, name) for name in _STAGES[recipe["job"]]]
    with atomic_directory(final) as tmp:
        if recipe["job"] == "teacher":
            _run_teacher(recipe, tmp, *stages)
        else:
            _run_features(recipe, tmp, *stages)
    seconds = time.perf_counter() - start + sum(stage.earlier_seconds for stage in stages)
    write_text_atomically(output_dir / "wall_time.txt", f"{seconds:.1f}\n")
    print(f"{recipe['job']}: wrote {final} in {seconds:.0f}s", flush=True)
    return RecipeResult(final, seconds)


def _check_resume(output_dir: Path, recipe: dict[str, Any], resume: bool, overwrite: bool) -> None:
    import shutil

    if resume and overwrite:
        raise ValueError("--resume and --overwrite: pick one (continue the run, or start it over)")
    started = (output_dir / "recipe.yaml").is_file()
    other = [name for name in ("final", "checkpoints") if (output_dir / name).exists()]
    if not started and other and not overwrite:
        # A folder with a run but no recipe.yaml holds another tool's run (a `tiue train` one, say).
        raise ValueError(
            f"--output-dir: {output_dir} holds another run ({', '.join(other)}/) that is not this recipe's "
            "(no recipe.yaml); pick another --output-dir, or pass --overwrite to replace it"
        )
    if not started and overwrite:
        for name in other:
            shutil.rmtree(output_dir / name)
    if started and overwrite:
        for name in ("checkpoints", "final", "recipe.yaml", "wall_time.txt"):
            path = output_dir / name
            shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    if not started or overwrite:
        return
    if not resume:
        raise ValueError(
            f"--output-dir: {output_dir} already holds a run of this recipe; pass --resume to continue it "
            "or --overwrite to start over"
        )
    saved = load_settings_file(output_dir / "recipe.yaml", "--resume")
    # Thread count changes speed, not results: a sitting on a busier machine may use fewer.
    changed = sorted(k for k in set(saved) | set(recipe) if k != "num_threads" and saved.get(k) != recipe.get(k))
    if changed:
        raise ValueError(
            f"--resume: {output_dir} was started with other settings ({', '.join(changed)} differ); "
            "resume with the same recipe and --set values, or pass --overwrite"
        )


def _apply_overrides(recipe: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    recipe = {k: dict(v) if isinstance(v, dict) else v for k, v in recipe.items()}
    for key, value in overrides.items():
        if "." in key:
            section, name = key.split(".", 1)
            if recipe.get(section) is None:
                recipe[section] = {}
            if not isinstance(recipe[section], dict):
                raise ValueError(f"--set {key}: {section!r} is not a section of settings, it holds {recipe[section]!r:.80}")
            recipe[section][name] = value
        else:
            recipe[key] = value
    return recipe


def _world(recipe) -> WorldConfig:
    return _settings(WorldConfig, recipe.get("world"), "world")


def _run_teacher(
    recipe: dict[str, Any], out: Path, vae_stage: StageCheckpoint, teacher_stage: StageCheckpoint,
    finetune_stage: StageCheckpoint,
) -> None:
    import shutil

    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from tiue.data.shapes import vocabulary
    from tiue.world.datasets import draw_training_set
    from tiue.world.teacher import TeacherSettings, teacher_scheduler_config, train_teacher
    from tiue.world.text_encoder import build_world_text_encoder
    from tiue.world.tokenizer import build_world_tokenizer
    from tiue.world.vae import VAESettings, train_vae

    world, seed = _world(recipe), int(recipe.get("seed", 0))
    vae_settings = _settings(VAESettings, dict({"seed": seed}, **(recipe.get("vae") or {})), "vae")
    teacher_settings = _settings(TeacherSettings, dict({"seed": seed}, **(recipe.get("teacher") or {})), "teacher")
    text_settings = dict(recipe.get("text_encoder") or {})

    data = draw_training_set(int(recipe.get("dataset_size", 20000)), seed, world)
    tokenizer = build_world_tokenizer(out / ".tokenizer-build", vocabulary(world))
    text_encoder = build_world_text_encoder(tokenizer, seed=seed, **text_settings)
    vae = train_vae(vae_settings, data, world.resolution, vae_stage)
    unet, text_encoder = train_teacher(
        teacher_settings, data, vae, tokenizer, text_encoder, teacher_stage
    )
    # An optional second stage from the first one's EMA weights, e.g. an epsilon teacher moved to
    # a zero-terminal-SNR v-prediction schedule; the pipeline then carries its schedule.
    if recipe.get("teacher_finetune"):
        finetune = dict(recipe["teacher_finetune"])
        architecture = {"block_out_channels", "layers_per_block", "attention_heads"} & set(finetune)
        if architecture:
            raise ValueError(f"teacher_finetune: {sorted(architecture)} belong to the teacher section (the stage keeps its UNet)")
        teacher_settings = _settings(TeacherSettings, dict({"seed": seed}, **finetune), "teacher_finetune")
        unet, text_encoder = train_teacher(
            teacher_settings, data, vae, tokenizer, text_encoder, finetune_stage, unet=unet
        )
    # A plain Stable Diffusion folder: the teacher is sampled step by step (and distilled), never
    # loop-free, so its model_index names StableDiffusionPipeline, not TiUEPipeline.
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler.from_config(teacher_scheduler_config(teacher_settings)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out, safe_serialization=True)
    shutil.rmtree(out / ".tokenizer-build", ignore_errors=True)


def _run_features(recipe: dict[str, Any], out: Path, stage: StageCheckpoint) -> None:
    from tiue.world.datasets import draw_training_set
    from tiue.world.features import FeatureNetConfig, FeatureNetSettings, train_feature_net

    world, seed = _world(recipe), int(recipe.get("seed", 0))
    section = dict(recipe.get("features") or {})
    config_keys = {f.name for f in dataclasses.fields(FeatureNetConfig)}
    config = _settings(FeatureNetConfig, dict({k: v for k, v in section.items() if k in config_keys}, resolution=world.resolution), "features")
    settings = _settings(FeatureNetSettings, dict({"seed": seed}, **{k: v for k, v in section.items() if k not in config_keys}), "features")
    data = draw_training_set(int(recipe.get("dataset_size", 20000)), seed, world)
    model = train_feature_net(settings, data, config, stage)
    model.save_pretrained(out / "model")
    # save_pretrained writes atomically into its own folder; move its files up into `out`.
    for item in (out / "model").iterdir():
        item.rename(out / item.name)
    (out / "model").rmdir()
