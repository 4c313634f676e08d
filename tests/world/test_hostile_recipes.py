"""Hostile recipe settings for `tiue world train` (from the file or --set) and a careless
`tiue world embed`: refused in one line naming the setting, before anything is drawn, trained
or written."""

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from tiue.cli import main
from tiue.cli.world import parse_assignment

REPO = Path(__file__).resolve().parents[2]
TEACHER = REPO / "configs/shapes-teacher.yaml"
FEATURES = REPO / "configs/shapes-features.yaml"
# Small enough that a recipe which slipped through would finish in seconds, not hours.
TINY = {
    TEACHER: ["dataset_size=16", "vae.steps=1", "vae.batch_size=2", "teacher.steps=1", "teacher.batch_size=2",
              "teacher.warmup_steps=0", "teacher_finetune.steps=1", "teacher_finetune.batch_size=2",
              "teacher_finetune.warmup_steps=0", "text_encoder.hidden_size=32", "text_encoder.num_layers=1"],
    FEATURES: ["dataset_size=16", "features.steps=1", "features.batch_size=2"],
}

# Every numeric setting of the recipes, by what it means (written here, not read from the code):
# count: an integer >= 1; index: an integer >= 0; rate: a number >= 0 (0 keeps the weights);
# weight: a number >= 0; fraction: a number in [0, 1]; radius: a [low, high] pair of fractions.
STAGE = {"steps": "count", "batch_size": "count", "learning_rate": "rate", "seed": "index"}
TEACHER_STAGE = dict(STAGE, warmup_steps="index", caption_dropout="fraction", ema_decay="fraction")
NUMERIC = {
    TEACHER: {
        "seed": "index", "dataset_size": "count", "num_threads": "count",
        "world.resolution": "count", "world.supersample": "count", "world.two_shape_probability": "fraction",
        "world.size_word_probability": "fraction", "world.background_word_probability": "fraction",
        "world.small_radius": "radius", "world.large_radius": "radius",
        "text_encoder.hidden_size": "count", "text_encoder.num_layers": "count", "text_encoder.num_heads": "count",
        "vae.layers_per_block": "count", "vae.kl_weight": "weight", "vae.block_out_channels": "channels",
        **{f"vae.{k}": v for k, v in STAGE.items()},
        "teacher.layers_per_block": "count", "teacher.attention_heads": "count", "teacher.block_out_channels": "channels",
        **{f"teacher.{k}": v for k, v in TEACHER_STAGE.items()},
        **{f"teacher_finetune.{k}": v for k, v in TEACHER_STAGE.items()},
    },
    FEATURES: {
        "seed": "index", "dataset_size": "count", "features.feature_dim": "count", "features.channels": "channels",
        **{f"features.{k}": v for k, v in STAGE.items()},
    },
}
HUGE = str(10**30)
ALWAYS_BAD = [".nan", ".inf", "-.inf", "-1", "-0.5", HUGE, "-" + HUGE, "1" + "0" * 400, "true", "false", "abc",
              '""', "[1]", "{a: 1}", "null", ""]
BAD = {
    "count": ["0", "2.5", "4.0", '"8"', "1e3"],
    "index": ["2.5", '"8"', str(2**64)],
    "rate": ['"nan"', "1e300", '"-1e-3"'],
    "weight": ["1e300", '"inf"'],
    "fraction": ["1.5", '"2"'],
    "radius": ["[0.3, 0.1]", "[0, 0.1]", "[0.1, 0.6]", "[0.1]", "[0.1, 0.2, 0.3]", "[.nan, 0.2]", "[0.1, .inf]"],
    "channels": ["[]", "[0, 64]", "[-32, 64]", "[32.0, 64]", "[32, .nan]", "[true, 64]", f"[32, {HUGE}]",
                 "[32, 64, 128, 128, 128, 128, 128, 128, 128]", '["32"]'],
}


def _fields(cls):
    return {f.name for f in dataclasses.fields(cls)}


def test_every_numeric_setting_is_covered_here():
    """A setting added to a stage's dataclass must join NUMERIC (and so the checks below)."""
    from tiue.data.shapes import WorldConfig
    from tiue.world.features import FeatureNetConfig, FeatureNetSettings
    from tiue.world.teacher import TeacherSettings
    from tiue.world.vae import VAESettings

    non_numeric = {"prediction_type", "zero_terminal_snr", "timestep_spacing"}
    teacher, features = set(NUMERIC[TEACHER]), set(NUMERIC[FEATURES])
    assert {n for n in teacher if n.startswith("world.")} == {f"world.{k}" for k in _fields(WorldConfig)}
    assert {n for n in teacher if n.startswith("vae.")} == {f"vae.{k}" for k in _fields(VAESettings)}
    assert {n for n in teacher if n.startswith("teacher.")} == {f"teacher.{k}" for k in _fields(TeacherSettings) - non_numeric}
    assert {n for n in features if n.startswith("features.")} == {
        f"features.{k}" for k in (_fields(FeatureNetConfig) - {"resolution"}) | _fields(FeatureNetSettings)}


def _cases():
    for recipe, settings in NUMERIC.items():
        for name, kind in settings.items():
            yield pytest.param(recipe, name, kind, id=f"{recipe.stem}:{name}")


@pytest.mark.parametrize("recipe, name, kind", list(_cases()))
def test_a_bad_setting_is_refused_naming_it_before_anything_is_written(recipe, name, kind, tmp_path):
    from tiue.world.recipes import load_recipe, run_recipe

    out = tmp_path / "out"
    base = dict(parse_assignment(text) for text in TINY[recipe])
    bad = ALWAYS_BAD + BAD[kind]
    if name == "num_threads":  # null: torch's own choice
        bad = [value for value in bad if value not in ("null", "")]
    if kind == "channels":  # one level of one channel is a (useless) network
        bad.remove("[1]")
    wrong = []
    for value in bad:
        key, parsed = parse_assignment(f"{name}={value}")
        try:
            run_recipe(load_recipe(recipe), dict(base, output_dir=str(out), **{key: parsed}))
        except (ValueError, TypeError) as error:
            message = str(error)
            if "\n" in message or not message.startswith(f"{name}:") or "expected" not in message:
                wrong.append((value, message))
        else:
            wrong.append((value, "accepted"))
        if out.exists():
            wrong.append((value, "wrote the output folder"))
            shutil.rmtree(out)
    assert not wrong, wrong


@pytest.mark.parametrize(
    "sets, named",
    [
        (["world.resolution=30"], "world.resolution"),  # not a multiple of the VAE's downsampling
        (["teacher.attention_heads=3"], "teacher.attention_heads"),  # 3 does not divide the UNet's widths
        (["text_encoder.hidden_size=130"], "text_encoder.hidden_size"),  # 130 heads of 4 do not split evenly
        (["teacher.block_out_channels=[16, 32]"], "teacher.block_out_channels"),  # groups of 32 channels
        (["vae.block_out_channels=[12, 24]"], "vae.block_out_channels"),  # groups of 8 channels
        (["teacher_finetune.prediction_type=epsilon"], "teacher_finetune.zero_terminal_snr"),
        (["teacher.prediction_type=x0"], "teacher.prediction_type"),
        (["teacher.zero_terminal_snr=1"], "teacher.zero_terminal_snr"),  # 1 is not true
        (["teacher=[1, 2]"], "teacher"),
        (["seed.value=3"], "--set seed.value"),
        (["teacher.colour=3"], "teacher"),
        (["job=painting"], "job"),
        (["job=features"], "the recipe"),  # a teacher recipe's sections mean nothing to the features job
        (["world=5"], "world"),
        (["num_threads=0"], "num_threads"),
    ],
)
def test_settings_that_disagree_are_refused_through_the_cli(sets, named, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["world", "train", "--config", str(TEACHER), "--output-dir", str(out)]
    for text in TINY[TEACHER] + sets:
        argv += ["--set", text]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and err[0].startswith(f"tiue world: error: {named}"), err
    assert not out.exists()


def test_a_string_that_spells_a_number_is_that_number(tmp_path):
    """YAML 1.1 reads 2e-3 (no dot) as a string: a learning rate so written is taken as 0.002,
    and an integer setting so written is refused rather than guessed."""
    from tiue.world.recipes import load_recipe, run_recipe

    path = tmp_path / "features.yaml"
    path.write_text(FEATURES.read_text().replace("learning_rate: 0.002", "learning_rate: 2e-3"))
    recipe = load_recipe(path)
    assert recipe["features"]["learning_rate"] == 0.002
    overrides = dict(parse_assignment(text) for text in TINY[FEATURES])
    run_recipe(recipe, dict(overrides, output_dir=str(tmp_path / "out")))
    assert "learning_rate: 0.002" in (tmp_path / "out" / "recipe.yaml").read_text()


# -- tiue world embed ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["shapes", "shapes-teacher", "shapes-features"])
def test_embedding_over_a_shipped_model_needs_overwrite(name, tmp_path, capsys):
    from tiue.embedded import EMBEDDED_DIR

    shipped = EMBEDDED_DIR / name
    if not shipped.is_dir():
        pytest.skip(f"this installation does not ship {name}")
    # The source is a copy of the shipped model itself: a replacement would change nothing but
    # the folder, which is what the test watches.
    source = tmp_path / "source"
    shutil.copytree(shipped, source)
    before = {p.relative_to(shipped): os.stat(p).st_ino for p in [shipped, *shipped.rglob("*")]}
    code = main(["world", "embed", "--source", str(source), "--name", name])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith(f"tiue world: error: --name: {name!r} is already an embedded model") and "--overwrite" in err[0]
    assert {p.relative_to(shipped): os.stat(p).st_ino for p in [shipped, *shipped.rglob("*")]} == before
    assert not [p for p in EMBEDDED_DIR.iterdir() if p.name.startswith(".")], "a temporary folder was left behind"


def test_embed_replaces_an_earlier_model_only_with_overwrite(tiny_pipeline_dir, tmp_path):
    from tiue.world.embedding import embed_model

    root = tmp_path / "embedded"
    first = embed_model(tiny_pipeline_dir, "tiny", root=root)
    (first / "marker").write_text("the first embed")
    with pytest.raises(ValueError, match=r"--name: 'tiny' is already an embedded model .*pass --overwrite"):
        embed_model(tiny_pipeline_dir, "tiny", root=root)
    assert (first / "marker").read_text() == "the first embed"
    embed_model(tiny_pipeline_dir, "tiny", root=root, overwrite=True)
    assert not (root / "tiny" / "marker").exists() and (root / "tiny" / "model_index.json").is_file()
