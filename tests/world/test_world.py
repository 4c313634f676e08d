"""The shapes world's models: tokenizer, recipes (a few steps each), embedding."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from tiue.data.shapes import vocabulary
from tiue.world.tokenizer import build_world_tokenizer

REPO = Path(__file__).resolve().parents[2]


def test_every_world_word_is_one_token(tmp_path):
    tokenizer = build_world_tokenizer(tmp_path, vocabulary())
    for word in vocabulary():
        assert tokenizer.tokenize(word) == [word + "</w>"]
    assert tokenizer.model_max_length == 16
    # Words outside the world still tokenize, one byte character at a time.
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]
    ids = tokenizer("a small blue square on a yellow background").input_ids
    assert len(ids) == 10  # start + 8 words + end


# The shipped teacher recipe at a few steps of each stage.
TINY_TEACHER = {
    "dataset_size": 16, "vae.steps": 2, "vae.batch_size": 4,
    "teacher.steps": 2, "teacher.batch_size": 4, "teacher.warmup_steps": 1,
    "teacher_finetune.steps": 1, "teacher_finetune.batch_size": 4, "teacher_finetune.warmup_steps": 1,
}


def test_teacher_recipe_runs_a_few_steps(tmp_path):
    from tiue.pipeline import TiUEPipeline
    from tiue.world.recipes import load_recipe, run_recipe

    overrides = dict(TINY_TEACHER, output_dir=str(tmp_path / "teacher"))
    result = run_recipe(load_recipe(REPO / "configs/shapes-teacher.yaml"), overrides)
    assert (tmp_path / "teacher" / "wall_time.txt").is_file()
    index = json.loads((result.final / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    pipe = TiUEPipeline.from_pretrained(result.final)
    assert pipe.tokenizer.model_max_length == 16
    image = pipe("a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert image.shape == (1, 32, 32, 3)


def test_features_recipe_runs_a_few_steps(tmp_path):
    from tiue.world.features import ShapesFeatureNet
    from tiue.world.recipes import load_recipe, run_recipe

    overrides = {"output_dir": str(tmp_path / "features"), "dataset_size": 16, "features.steps": 2, "features.batch_size": 4}
    result = run_recipe(load_recipe(REPO / "configs/shapes-features.yaml"), overrides)
    net = ShapesFeatureNet.from_pretrained(result.final)
    features, logits = net(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, 64) and logits["shape"].shape == (2, 4)


def test_recipe_errors_name_the_key(tmp_path):
    from tiue.world.recipes import load_recipe, run_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text("job: painting\n")
    with pytest.raises(ValueError, match="job: expected one of teacher, features"):
        load_recipe(bad)
    bad.write_text("job: features\nfeatures: {colour_depth: 3}\n")
    with pytest.raises(ValueError, match="colour_depth"):
        run_recipe(load_recipe(bad), {"output_dir": str(tmp_path / "x")})


@pytest.mark.parametrize("name", ["tiue", "tiue-nokl", "vsd"])
def test_distillation_recipes_are_trainer_configs(name):
    from tiue.train.config import TrainConfig

    config = TrainConfig.from_sources(REPO / f"configs/shapes-{name}.yaml", {})
    assert config.num_steps == (1 if name == "vsd" else 4)
    assert config.lambda_kl == (0.1 if name == "tiue" else 0.0)
    assert Path(REPO / config.captions).is_file()


def test_caption_file_is_the_world_caption_space():
    from tiue.data.shapes import caption_space

    assert (REPO / "configs/shapes-captions.txt").read_text().splitlines() == caption_space()


def test_distillation_recipe_runs_a_step(tiny_pipeline_dir, tmp_path):
    from tiue.cli import main
    from tiue.pipeline import TiUEPipeline

    output = tmp_path / "run"
    code = main([
        "train", "--config", str(REPO / "configs/shapes-tiue.yaml"), "--teacher", str(tiny_pipeline_dir),
        "--captions", str(REPO / "configs/shapes-captions.txt"), "--output-dir", str(output),
        "--max-steps", "1", "--batch-size", "2", "--lora-rank", "4",
    ])
    assert code == 0
    pipe = TiUEPipeline.from_pretrained(output / "final")
    assert pipe("a red circle", num_inference_steps=4, output_type="np").images.shape == (1, 32, 32, 3)


def test_embed_stores_weights_in_half_precision_and_loads_them_as_float32(tiny_pipeline_dir, tmp_path):
    from safetensors.torch import load_file

    from tiue.model_card import write_model_card
    from tiue.pipeline import TiUEPipeline
    from tiue.world.embedding import embed_model

    source = tmp_path / "source"
    shutil.copytree(tiny_pipeline_dir, source)
    (source / "unet_raw").mkdir()  # a trainer's artefact beside the components: not shipped
    (source / "unet_raw" / "weights.safetensors").write_bytes(b"")
    teacher = tmp_path / "embedded" / "tiny-teacher"  # a base model embedded beside it
    shutil.copytree(tiny_pipeline_dir, teacher)
    # as a training run's final/ has one, naming the run's output path and the teacher's folder
    write_model_card(source, name=str(source), base_model=str(teacher))
    target = embed_model(source, "tiny", fp16=True, root=tmp_path / "embedded")
    card = (target / "README.md").read_text()
    assert "# tiny\n" in card and 'from_pretrained("tiny")' in card and "--model tiny " in card
    assert 'base_model: "tiny-teacher"' in card
    assert str(tmp_path) not in card
    assert not (target / "unet_raw").exists() and (target / "model_index.json").is_file()
    unet = load_file(str(next((target / "unet").glob("*.safetensors"))))
    text = load_file(str(next((target / "text_encoder").glob("*.safetensors"))))
    assert {v.dtype for v in unet.values()} == {torch.float16}
    assert {v.dtype for v in text.values()} == {torch.float16}
    pipe = TiUEPipeline.from_pretrained(target)
    assert pipe.unet.dtype == torch.float32 and pipe.text_encoder.dtype == torch.float32
    original = TiUEPipeline.from_pretrained(source)
    for name, value in pipe.text_encoder.state_dict().items():  # the float32 weights rounded to float16
        torch.testing.assert_close(value, original.text_encoder.state_dict()[name].half().float(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="--name"):
        embed_model(source, "../x", root=tmp_path)


def test_an_interrupted_recipe_resumes_to_the_same_model(tmp_path, monkeypatch):
    """Killed right after a mid-run checkpoint, `--resume` finishes with the weights of a straight run."""
    from safetensors.torch import load_file

    from tiue.world import checkpoints
    from tiue.world.recipes import load_recipe, run_recipe

    monkeypatch.setattr(checkpoints, "CHECKPOINT_SECONDS", 0.0)  # save after every step
    recipe = load_recipe(REPO / "configs/shapes-features.yaml")
    settings = {"dataset_size": 16, "features.steps": 4, "features.batch_size": 4}
    straight = run_recipe(recipe, dict(settings, output_dir=str(tmp_path / "straight")))

    save = checkpoints.StageCheckpoint.save

    def save_then_die_at_step_2(self, state):
        save(self, state)
        if state["step"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.StageCheckpoint, "save", save_then_die_at_step_2)
    interrupted = dict(settings, output_dir=str(tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe, interrupted)
    assert not (tmp_path / "resumed" / "final").exists()
    monkeypatch.setattr(checkpoints.StageCheckpoint, "save", save)
    with pytest.raises(ValueError, match="already holds a run of this recipe; pass --resume"):
        run_recipe(recipe, interrupted)
    with pytest.raises(ValueError, match="--resume: .* was started with other settings \\(features differ\\)"):
        run_recipe(recipe, dict(interrupted, **{"features.steps": 5}), resume=True)
    resumed = run_recipe(recipe, interrupted, resume=True)

    a, b = (load_file(r.final / "model.safetensors") for r in (straight, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.load(tmp_path / "resumed" / "checkpoints" / "features.pt", weights_only=True)["finished"]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_planted_pickle_in_a_recipe_checkpoint_is_refused_without_running(tmp_path):
    from tiue.world.checkpoints import StageCheckpoint

    stage = StageCheckpoint(tmp_path / "checkpoints", "teacher")
    stage.path.parent.mkdir()
    marker = tmp_path / "payload-ran"
    torch.save({"step": 1, "modules": _Payload(marker)}, stage.path)
    with pytest.raises(ValueError, match="--resume: cannot read .*teacher.pt"):
        stage.load()
    assert not marker.exists()


def test_teacher_recipe_ends_on_a_zero_terminal_snr_v_prediction_schedule(tmp_path):
    from diffusers import DDIMScheduler

    from tiue.world.recipes import load_recipe, run_recipe

    final = run_recipe(load_recipe(REPO / "configs/shapes-teacher.yaml"), dict(TINY_TEACHER, output_dir=str(tmp_path / "t"))).final
    scheduler = DDIMScheduler.from_pretrained(final, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.timestep_spacing == "trailing"
    assert float(scheduler.alphas_cumprod[-1]) == 0.0
    # SD2.1-base's schedule otherwise: the first alphabar is unchanged by the rescale.
    assert float(scheduler.alphas_cumprod[0]) == pytest.approx(1 - 0.00085, abs=1e-6)


def test_teacher_v_prediction_target_is_the_velocity():
    from diffusers import DDPMScheduler

    from tiue.world.teacher import TeacherSettings, teacher_scheduler_config, training_target

    schedule = DDPMScheduler.from_config(
        teacher_scheduler_config(TeacherSettings(prediction_type="v_prediction", zero_terminal_snr=True))
    )
    generator = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 500, 999])
    target = training_target(schedule, latents, noise, timesteps)
    alphabar = schedule.alphas_cumprod[timesteps].view(-1, 1, 1, 1)
    torch.testing.assert_close(target, alphabar.sqrt() * noise - (1 - alphabar).sqrt() * latents)
    # At zero terminal SNR x_999 is pure noise and the velocity is minus the clean latent.
    torch.testing.assert_close(target[2], -latents[2])
    epsilon = DDPMScheduler.from_config(teacher_scheduler_config(TeacherSettings()))
    assert training_target(epsilon, latents, noise, timesteps) is noise


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"prediction_type": "sample"}, "teacher.prediction_type: expected one of epsilon, v_prediction, got 'sample'"),
        ({"timestep_spacing": "even"}, "teacher.timestep_spacing: expected one of leading, trailing, linspace"),
        ({"zero_terminal_snr": True}, "teacher.zero_terminal_snr: needs prediction_type 'v_prediction'"),
    ],
)
def test_teacher_schedule_settings_are_checked(settings, message):
    from tiue.world.teacher import TeacherSettings

    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        TeacherSettings(**settings)


def test_teacher_finetune_stage_starts_from_the_first_stages_ema_weights(tmp_path):
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from tiue.world.recipes import load_recipe, run_recipe

    base = {k: v for k, v in TINY_TEACHER.items() if not k.startswith("teacher_finetune.")}
    recipe = load_recipe(REPO / "configs/shapes-teacher.yaml")
    recipe.pop("teacher_finetune")
    plain = run_recipe(recipe, dict(base, output_dir=str(tmp_path / "plain"))).final
    # A zero learning rate keeps the weights: the second stage must start from the first one's.
    recipe["teacher_finetune"] = {"steps": 1, "batch_size": 4, "learning_rate": 0.0, "warmup_steps": 1,
                                  "prediction_type": "v_prediction", "zero_terminal_snr": True, "timestep_spacing": "trailing"}
    tuned = run_recipe(recipe, dict(base, output_dir=str(tmp_path / "tuned"))).final
    first, second = (UNet2DConditionModel.from_pretrained(f, subfolder="unet").state_dict() for f in (plain, tuned))
    for name, value in first.items():
        torch.testing.assert_close(second[name], value, rtol=0, atol=0)
    assert DDIMScheduler.from_pretrained(plain, subfolder="scheduler").config.prediction_type == "epsilon"
    scheduler = DDIMScheduler.from_pretrained(tuned, subfolder="scheduler")
    assert scheduler.config.prediction_type == "v_prediction" and float(scheduler.alphas_cumprod[-1]) == 0.0
    assert (tmp_path / "tuned" / "checkpoints" / "teacher_finetune.pt").is_file()

    recipe["teacher_finetune"]["layers_per_block"] = 1
    with pytest.raises(ValueError, match=r"teacher_finetune: \['layers_per_block'\] belong to the teacher section"):
        run_recipe(recipe, dict(base, output_dir=str(tmp_path / "bad")))
