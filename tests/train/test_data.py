"""Caption loading, the sharded resumable sampler, and config checks that run before compute."""

import json

import pytest

from tiue.train.config import TrainConfig
from tiue.train.data import CaptionSampler, SamplerPosition, load_captions


def test_txt_captions_are_stripped_deduplicated_and_empty_ones_dropped(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("a cat\n\n  a   dog \na cat\n   \nbird\n")
    assert load_captions(path) == ["a cat", "a dog", "bird"]


def test_jsonl_fields_journeydb_layout_and_folders(tmp_path):
    (tmp_path / "data").mkdir()
    plain = tmp_path / "data" / "a.jsonl"
    plain.write_text("\n".join(json.dumps({"caption": c}) for c in ["one", "two", "one"]) + "\n")
    journeydb = tmp_path / "data" / "b.jsonl"
    journeydb.write_text(
        "\n".join(json.dumps({"prompt": "ignored", "Task2": {"Caption": c}}) for c in ["three", "", "two"])
    )
    (tmp_path / "data" / "notes.md").write_text("not captions")
    assert load_captions(plain) == ["one", "two"]
    assert load_captions(journeydb, field="Task2.Caption") == ["three", "two"]
    assert load_captions(tmp_path / "data", field="Task2.Caption") == ["three", "two"]  # a.jsonl lacks it
    custom = tmp_path / "custom.jsonl"
    custom.write_text(json.dumps({"meta": {"alt": "x"}}) + "\n")
    assert load_captions(custom, field="meta.alt") == ["x"]


def test_jsonl_records_with_the_official_datasets_keys(tmp_path):
    records = [{"Caption": "upper"}, {"Caption:": "with a colon"}, {"caption": "lower"},
               {"Caption": "first key wins", "caption": "not this"}]
    path = tmp_path / "official.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert load_captions(path) == ["upper", "with a colon", "lower", "first key wins"]


@pytest.mark.parametrize(
    "content, match",
    [
        (None, "--captions: no such file"),
        ("\n  \n", "--captions: no captions"),
        ('{"other": 1}\n', "--caption-field"),
        ("{not json\n", "not valid JSON"),
    ],
)
def test_caption_errors_name_the_flag(tmp_path, content, match):
    path = tmp_path / ("c.jsonl" if content and "{" in content else "c.txt")
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_captions(path)


def test_sampler_shards_equal_one_process_with_the_doubled_batch():
    one = CaptionSampler(50, batch_size=4, num_processes=1, seed=3)
    shards = [CaptionSampler(50, batch_size=2, num_processes=2, rank=r, seed=3) for r in range(2)]
    position = SamplerPosition()
    seen = []
    for _ in range(one.batches_per_epoch * 2 + 1):  # across an epoch boundary
        whole, first = one.batch(position)
        parts = [s.batch(position) for s in shards]
        assert first == 0 and [p[1] for p in parts] == [0, 2]
        assert parts[0][0] + parts[1][0] == whole
        if position.epoch == 0:
            seen += whole
        position = one.advance(position)
    assert len(set(seen)) == len(seen) == one.batches_per_epoch * 4  # no repeats in an epoch
    assert one.batch(SamplerPosition(1, 0))[0] != one.batch(SamplerPosition(0, 0))[0]


def test_sampler_resumes_at_the_exact_next_batch():
    a = CaptionSampler(30, batch_size=3, seed=9)
    position = SamplerPosition()
    for _ in range(7):
        position = a.advance(position)
    fresh = CaptionSampler(30, batch_size=3, seed=9)  # a new process after a restart
    assert fresh.batch(position) == a.batch(position)
    assert position == SamplerPosition(0, 7)
    assert a.advance(SamplerPosition(0, 9)) == SamplerPosition(1, 0)


def test_too_few_captions_for_one_step():
    with pytest.raises(ValueError, match="--batch-size: one step needs 8 captions"):
        CaptionSampler(5, batch_size=4, num_processes=2)


@pytest.mark.parametrize(
    "changes, error, match",
    [
        (dict(num_steps=0), ValueError, "--num-steps: expected an integer from 1 to 1000, got 0"),
        (dict(batch_size=0), ValueError, "--batch-size"),
        (dict(mixed_precision="fp8"), ValueError, "--mixed-precision: expected one of no, fp16, bf16"),
        (dict(teacher=None), ValueError, "--teacher: required"),
        (dict(ema_decay=1.5), ValueError, "--ema-decay"),
        (dict(lambda_clip=0.5), ValueError, "--lambda-clip: 0.5 needs --clip-model"),
        (dict(clip_model="m"), ValueError, "--lambda-clip: --clip-model 'm' needs a weight > 0"),
        (dict(resume="/no/such/checkpoint"), ValueError, "--resume"),
        (dict(num_steps=2.5), TypeError, "--num-steps: expected an integer"),
        (dict(lora_init="kaiming"), ValueError, "--lora-init: expected one of default, gaussian, got 'kaiming'"),
        (dict(kl_target="v"), ValueError, "--kl-target: expected one of output, epsilon, got 'v'"),
        (dict(lora_loss="v"), ValueError, "--lora-loss: expected one of alphabar, teacher, got 'v'"),
        (dict(lora_null_prompt_scope="row"), ValueError, "--lora-null-prompt-scope: expected one of batch, sample"),
        (dict(timestep_spacing="even"), ValueError, "--timestep-spacing: expected one of leading, trailing, linspace"),
        (dict(half_precision_teacher="yes"), TypeError, "--half-precision-teacher: expected true or false"),
    ],
)
def test_config_errors_name_the_flag(changes, error, match):
    values = dict(teacher="t", captions="c.txt")
    values.update(changes)
    with pytest.raises(error, match=match):
        TrainConfig(**values).check()


def test_global_batch_must_divide_across_processes():
    config = TrainConfig(teacher="t", captions="c", global_batch_size=6)
    assert config.per_process_batch_size(2) == 3
    with pytest.raises(ValueError, match="--global-batch-size: 6 does not divide across 4 processes"):
        config.per_process_batch_size(4)


def test_yaml_then_flags_win(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("teacher: t\ncaptions: c.txt\nbatch-size: 16\nlora_targets: to_q,to_k\nlambda_kl: 0.2\n")
    config = TrainConfig.from_sources(path, {"batch_size": 4})
    assert (config.batch_size, config.lambda_kl, config.lora_targets) == (4, 0.2, ("to_q", "to_k"))
    path.write_text("teacher: t\nbatch_sise: 3\n")
    with pytest.raises(ValueError, match="--batch-sise: unknown setting"):
        TrainConfig.from_sources(path)
