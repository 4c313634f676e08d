"""Hostile settings for `tiue train` and the settings files of `tiue train` and `tiue world train`:
each is refused in one line naming the setting (or the file), the value and what is accepted,
before any model loads or any output folder is made."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

from tiue.cli import main
from tiue.train.config import TrainConfig, flag_name

REPO = Path(__file__).resolve().parents[1]

# Every numeric setting of `tiue train`, by what it means (written here, not read from the code):
# count: an integer >= 1; index: an integer >= 0; positive: a number > 0; weight: a number >= 0;
# fraction: a number in [0, 1]. Optional ones also take null (their default).
NUMERIC = {
    "max_steps": "count", "epochs": "count", "batch_size": "count", "global_batch_size": "count",
    "gradient_accumulation_steps": "count", "kl_reference_batch_size": "count", "resolution": "count", "num_steps": "count", "lora_rank": "count",
    "checkpoint_every": "count", "keep_checkpoints": "count", "max_consecutive_nonfinite": "count",
    "log_every": "count", "lr_warmup_steps": "index", "validate_every": "index", "seed": "index",
    "vsd_min_timestep": "index", "vsd_max_timestep": "index",
    "learning_rate": "positive", "learning_rate_lora": "positive", "lora_alpha": "positive", "max_grad_norm": "positive",
    "lambda_kl": "weight", "lambda_clip": "weight", "guidance_scale": "weight", "clip_margin": "weight",
    "ema_decay": "fraction", "lora_null_prompt_probability": "fraction",
}
OPTIONAL = {"max_steps", "global_batch_size", "resolution"}
HUGE = 10**30
# Refused by every numeric setting: not finite, negative, huge, or not a number at all.
ALWAYS_BAD = [math.nan, math.inf, -math.inf, -1, -0.5, HUGE, -HUGE, 10**400, True, False, "abc", "", [1], {"a": 1}]
BAD = {
    "count": [0, 2.5, 4.0, "8", "1e3"],
    "index": [2.5, 4.0, "8", 2**64],
    "positive": [0, 0.0, "nan", "-1e-6", 1e300],
    "weight": [1e300, "inf"],
    "fraction": [1.5, 1.0000001, "2"],
}


def as_yaml(value) -> str:
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, float) and math.isinf(value):
        return ".inf" if value > 0 else "-.inf"
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {as_yaml(v)}" for k, v in value.items()) + "}"
    return repr(value)  # ints, floats, lists of ints


def config_file(tmp_path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text("teacher: some/teacher\ncaptions: captions.txt\n" + text)
    return path


def test_every_numeric_setting_is_covered_here():
    """A numeric setting added to TrainConfig must join NUMERIC (and so the checks below)."""
    import dataclasses

    numeric = {f.name for f in dataclasses.fields(TrainConfig)
               if not isinstance(f.default, bool) and isinstance(f.default, (int, float))}
    numeric |= OPTIONAL
    assert numeric == set(NUMERIC)


def test_every_setting_has_its_own_rule():
    import dataclasses

    from tiue.train.validation import TRAIN_SETTINGS

    assert {f.name for f in dataclasses.fields(TrainConfig)} == set(TRAIN_SETTINGS)


@pytest.mark.parametrize("name", sorted(NUMERIC))
def test_a_bad_number_in_the_yaml_is_refused_naming_the_setting(name, tmp_path):
    bad = ALWAYS_BAD + BAD[NUMERIC[name]] + ([] if name in OPTIONAL else [None])
    wrong = []
    for value in bad:
        path = config_file(tmp_path, f"{name}: {as_yaml(value)}\n")
        try:
            TrainConfig.from_sources(path, {}).check()
        except (ValueError, TypeError) as error:
            message = str(error)
            if "\n" in message or not message.startswith(flag_name(name) + ":") or "expected" not in message:
                wrong.append((value, message))
        else:
            wrong.append((value, "accepted"))
    assert not wrong, wrong


@pytest.mark.parametrize(
    "name, value, expected",
    [
        ("learning_rate", "1e-6", 1e-6),  # YAML 1.1 reads 1e-6 (no dot) as a string: taken as the number
        ("learning_rate_lora", "2E-3", 2e-3),
        ("lora_alpha", "27", 27.0),
        ("lora_alpha", 27, 27),
        ("ema_decay", 0, 0),
        ("ema_decay", 1.0, 1.0),
        ("lora_null_prompt_probability", 1, 1),
        ("guidance_scale", 0.0, 0.0),
        ("lambda_kl", 0, 0),
        ("max_steps", None, None),
        ("seed", 2**32 - 1, 2**32 - 1),
        ("vsd_min_timestep", 0, 0),
    ],
)
def test_edge_values_that_make_sense_are_kept(name, value, expected, tmp_path):
    config = TrainConfig.from_sources(config_file(tmp_path, f"{name}: {as_yaml(value)}\n"), {})
    config.check()
    assert getattr(config, name) == expected and type(getattr(config, name)) is type(expected)


@pytest.mark.parametrize("path", sorted(REPO.glob("configs/*.yaml")), ids=lambda p: p.name)
def test_the_shipped_configs_still_pass(path):
    import yaml

    from tiue.world.recipes import load_recipe

    if "job" in yaml.safe_load(path.read_text()):
        load_recipe(path)
    else:
        TrainConfig.from_sources(path, {"teacher": "t", "captions": "c"}).check()


def test_the_vsd_timestep_range_must_be_ordered(tmp_path):
    path = config_file(tmp_path, "vsd_min_timestep: 500\nvsd_max_timestep: 400\n")
    with pytest.raises(ValueError, match="--vsd-max-timestep: expected >= --vsd-min-timestep"):
        TrainConfig.from_sources(path, {}).check()


def test_a_token_of_the_wrong_kind_is_not_echoed():
    config = TrainConfig(teacher="t", captions="c", hub_token=["hf_secret"])
    with pytest.raises(TypeError, match="--hub-token") as error:
        config.check()
    assert "hf_secret" not in str(error.value)


# -- through the command line: one line, no model, no folder ------------------------------


@pytest.fixture
def no_model_loads(monkeypatch):
    import tiue.train.trainer

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded for settings that should have been refused")

    monkeypatch.setattr(tiue.train.trainer, "build_models", refuse)


def run_train(argv, capsys):
    try:
        code = main(["train", *argv])
    except SystemExit as exit:
        code = exit.code
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    "flag, value",
    [
        ("--learning-rate", "nan"), ("--learning-rate", "inf"), ("--learning-rate-lora", "nan"),
        ("--lambda-kl", "nan"), ("--lambda-kl", "inf"), ("--guidance-scale", "nan"), ("--guidance-scale", "inf"),
        ("--max-grad-norm", "nan"), ("--max-grad-norm", "inf"), ("--lora-null-prompt-probability", "nan"),
        ("--lora-alpha", "nan"), ("--lora-alpha", "inf"), ("--lora-alpha", "-inf"), ("--ema-decay", "nan"),
        ("--lambda-clip", "nan"), ("--clip-margin", "inf"), ("--learning-rate", "1e400"),
        ("--batch-size", str(HUGE)), ("--max-steps", str(HUGE)), ("--lora-rank", str(HUGE)),
        ("--resolution", str(HUGE)), ("--num-steps", str(HUGE)), ("--gradient-accumulation-steps", str(HUGE)),
        ("--checkpoint-every", str(HUGE)), ("--lr-warmup-steps", "-5"), ("--log-every", "0"),
    ],
)
def test_the_cli_refuses_a_bad_number_before_loading_a_model(flag, value, tmp_path, capsys, no_model_loads):
    (tmp_path / "captions.txt").write_text("a red circle\na blue square\n")
    out = tmp_path / "out"
    argv = ["--teacher", "shapes-teacher", "--captions", str(tmp_path / "captions.txt"), "--output-dir", str(out),
            "--device", "cpu", "--report-to", "none", "--max-steps", "1", "--batch-size", "2", f"{flag}={value}"]
    code, err = run_train(argv, capsys)
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith(f"tiue train: error: {flag}: expected"), err
    assert not out.exists()


def test_the_cli_refuses_a_bad_number_from_the_yaml_file(tmp_path, capsys, no_model_loads):
    (tmp_path / "captions.txt").write_text("a red circle\n")
    path = tmp_path / "run.yaml"
    path.write_text(f"teacher: shapes-teacher\ncaptions: {tmp_path / 'captions.txt'}\noutput_dir: {tmp_path / 'out'}\n"
                    "device: cpu\nmax_steps: 1\nbatch_size: 1\nlora_alpha: .nan\n")
    code, err = run_train(["--config", str(path)], capsys)
    assert code == 1 and len(err) == 1 and err[0].startswith("tiue train: error: --lora-alpha: expected"), err
    assert "nan" in err[0] and not (tmp_path / "out").exists()


# -- settings files: bounded, plain YAML, for both commands -------------------------------


def _bomb_by_aliases(levels: int = 9) -> str:
    """A list that stands for 10**levels strings, written in a few hundred bytes."""
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]")
    return "\n".join(lines)


def _bomb_by_merges(levels: int = 9) -> str:
    """Merge keys make the YAML loader itself copy each level ten times over."""
    lines = ["m0: &m0 {k: 1}"]
    for i in range(1, levels + 1):
        lines.append(f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 10)}]}}")
    return "\n".join(lines)


def hostile_files(tmp: Path, marker: Path) -> dict[str, bytes]:
    return {
        "a list": b"- teacher: t\n- captions: c\n",
        "a scalar": b"just some words\n",
        "a number": b"42\n",
        "malformed": b"teacher: [unclosed\ncaptions: c\n",
        "tab indentation": b"teacher:\n\tx: 1\n",
        "two documents": b"teacher: t\n---\ncaptions: c\n",
        "a python tag": f"!!python/object/apply:os.system ['touch {marker}']\n".encode(),
        "a python tag in a value": f"seed: !!python/object/apply:os.system ['touch {marker}']\n".encode(),
        "a python name": b"seed: !!python/name:os.system\n",
        "a local tag": b"seed: !seed 3\n",
        "not UTF-8": b"teacher: t\ncaptions: \xff\xfe\n",
        "an alias bomb": _bomb_by_aliases().encode() + b"\nvalidation_prompts: *a9\nworld: {small_radius: *a9}\n",
        "a merge-key bomb": _bomb_by_merges(6).encode() + b"\n",
        "a cycle": b"validation_prompts: &loop [*loop]\nworld: &w {a: *w}\n",
        "deep nesting": b"seed: " + b"[" * 50000 + b"\n",
        "a key twice": b"seed: 1\nseed: 2\n",
        "an integer of 5000 digits": b"seed: " + b"9" * 5000 + b"\n",
        "over a megabyte": b"# padding\n" * 120_000 + b"seed: 1\n",
    }


CASES = list(hostile_files(Path("/x"), Path("/x/m")))


@pytest.mark.parametrize("command", ["train", "world"])
@pytest.mark.parametrize("case", CASES)
def test_a_hostile_settings_file_gets_one_line_naming_it(case, command, tmp_path, capsys, no_model_loads):
    marker = tmp_path / "executed"
    path = tmp_path / "hostile.yaml"
    path.write_bytes(hostile_files(tmp_path, marker)[case])
    out = tmp_path / "out"
    argv = (["train", "--config", str(path), "--output-dir", str(out)] if command == "train"
            else ["world", "train", "--config", str(path), "--output-dir", str(out)])
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1, err
    assert len(err) == 1 and err[0].startswith(f"tiue {command}: error: --config") and str(path) in err[0], err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("command", [["train"], ["world", "train"]])
def test_a_merge_key_bomb_is_refused_at_once_not_expanded(command, tmp_path):
    """Ten levels of ten-fold merges: 10**10 keys if expanded (hours, and memory without
    bound); refused on reading. The time limit only tells a hang from an answer."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb_by_merges(10) + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "tiue", *command, "--config", str(path), "--output-dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "expands to more than" in lines[0] and str(path) in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_set_values_are_read_by_the_same_bounded_loader(tmp_path, capsys):
    out = tmp_path / "out"
    bomb = "[" + ", ".join(["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]) + "]"
    for value in (bomb, "!!python/name:os.system", "&a [*a]", "[unclosed"):
        with pytest.raises(SystemExit):
            main(["world", "train", "--config", str(REPO / "configs/shapes-features.yaml"), "--output-dir", str(out),
                  "--set", "dataset_size=16", "--set", "features.steps=1", "--set", f"features.channels={value}"])
        err = capsys.readouterr().err
        assert "argument --set: features.channels: not valid settings YAML" in err, err
    assert not out.exists()
