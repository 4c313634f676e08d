"""The flags diffusers' training examples have (train_text_to_image_lora.py,
train_lcm_distill_sd_wds.py): --report-to wandb, --lr-scheduler, --push-to-hub, --revision /
--variant, --allow-tf32, --use-8bit-adam, and their YAML names as aliases."""

import importlib.util
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.optimizer import register_optimizer_step_pre_hook

from tiue.cli import main
from tiue.train import TrainConfig, Trainer
from tiue.train.config import EXAMPLE_ALIASES, LR_SCHEDULERS
from tiue.train.setup import build_lr_schedule

# Checks that must fail before any model loads get a teacher that would fail to load.
NO_TEACHER = "/no/such/teacher/is/loaded"
HAS_WANDB = importlib.util.find_spec("wandb") is not None
HAS_BITSANDBYTES = importlib.util.find_spec("bitsandbytes") is not None


class StepRecorder:
    """At every optimizer.step() of any optimizer: (optimizer, its lr, the two TF32 flags)."""

    def __init__(self):
        self.steps = []
        self.handle = register_optimizer_step_pre_hook(self._record)

    def _record(self, optimizer, args, kwargs):
        tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        self.steps.append((optimizer, optimizer.param_groups[0]["lr"], tf32))

    def lrs(self, optimizer) -> list[float]:
        return [lr for opt, lr, _ in self.steps if opt is optimizer]


@pytest.fixture
def recorder():
    recorder = StepRecorder()
    yield recorder
    recorder.handle.remove()


@pytest.fixture
def tf32_flags():
    """Known TF32 flags before the test (not torch's defaults), the process's own put back after."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, True
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_help_lists_the_new_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    for flag in ("--report-to", "wandb", "--lr-scheduler", "--push-to-hub", "--hub-model-id", "--hub-token",
                 "--revision", "--variant", "--allow-tf32", "--use-8bit-adam"):
        assert flag in text, flag


# -- --report-to wandb -------------------------------------------------------------------------


@pytest.mark.skipif(HAS_WANDB, reason="wandb is installed: the offline-run test covers it")
def test_report_to_wandb_without_wandb_is_refused_before_any_model_loads(make_config):
    with pytest.raises(ValueError) as error:
        Trainer(make_config(report_to="wandb", teacher=NO_TEACHER))
    assert str(error.value) == "--report-to wandb needs the wandb package: pip install wandb"


@pytest.mark.skipif(not HAS_WANDB, reason="wandb is not installed: the error test covers it")
def test_report_to_wandb_logs_the_run_offline(make_config, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wandb-dir").mkdir()
    Trainer(make_config(report_to="wandb", max_steps=2, hub_token="hf_never_logged")).fit()

    runs = list((tmp_path / "wandb-dir" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    logged = read_wandb_run(runs[0])
    steps = [record for record in logged["history"] if "loss/vsd" in record]
    assert [record["_step"] for record in steps] == [1, 2]
    assert all(math.isfinite(record[key]) for record in steps for key in ("loss/vsd", "loss/kl", "lr/student"))
    assert logged["config"]["num_steps"] == 2 and "hub_token" not in logged["config"]


def read_wandb_run(run_dir: Path) -> dict:
    """The history rows and config an offline wandb run recorded in its .wandb log: a ":W&B"
    header, then leveldb-log records (in 32 KiB blocks, each part with a 7-byte header: crc,
    length, kind), each a wandb Record protobuf. wandb ships no Python reader of it."""
    import json

    from wandb.proto import wandb_internal_pb2

    data = next(run_dir.glob("run-*.wandb")).read_bytes()
    assert data[:4] == b":W&B"
    block, position, parts, history, config = 32768, 7, [], [], {}
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        parts.append(data[position + 7:position + 7 + length])
        position += 7 + length
        if kind not in (1, 4):  # not FULL or LAST: the record goes on in the next block
            continue
        record = wandb_internal_pb2.Record()
        record.ParseFromString(b"".join(parts))
        parts = []
        if record.WhichOneof("record_type") == "history":
            history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                            for item in record.history.item})
        elif record.WhichOneof("record_type") == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
    return {"history": history, "config": config}


# -- --lr-scheduler ----------------------------------------------------------------------------


def test_lr_schedule_is_followed_by_both_optimizers_step_by_step_and_resumes(make_config, tmp_path, recorder):
    # linear, warm-up 2 of 4 steps: the lr each optimizer steps with is 0, 1/2, 1, 1/2 of its base.
    trainer = Trainer(make_config(max_steps=4, lr_scheduler="linear", lr_warmup_steps=2, learning_rate_lora=1e-3))
    trainer.fit()
    expected = [0.0, 0.5, 1.0, 0.5]
    assert recorder.lrs(trainer.student_optimizer) == pytest.approx([f * 1e-4 for f in expected])
    assert recorder.lrs(trainer.lora_optimizer) == pytest.approx([f * 1e-3 for f in expected])

    # Checkpointed and resumed: a 2-step run (its schedule ended at 0) resumed to 4 steps goes on
    # with the 4-step schedule, as the straight run did.
    first = make_config(max_steps=2, lr_scheduler="linear", lr_warmup_steps=2, output_dir=str(tmp_path / "resumed"))
    Trainer(first).fit()
    resumed = Trainer(make_config(max_steps=4, lr_scheduler="linear", lr_warmup_steps=2,
                                  output_dir=str(tmp_path / "resumed"), resume="latest"))
    assert resumed.student_lr.last_epoch == 2  # the schedule's position came back from the checkpoint
    resumed.fit()
    assert recorder.lrs(resumed.student_optimizer) == pytest.approx([1e-4, 0.5e-4])
    assert recorder.lrs(resumed.lora_optimizer) == pytest.approx([1e-3, 0.5e-3])


def schedule_factors(name: str, warmup: int, max_steps: int) -> list[float]:
    """The lr factor of each of max_steps optimizer steps, from the trainer's own builder."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = build_lr_schedule(TrainConfig(lr_scheduler=name, lr_warmup_steps=warmup), optimizer, max_steps)
    factors = []
    for _ in range(max_steps):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    return factors


@pytest.mark.parametrize("name", LR_SCHEDULERS)
def test_every_schedule_warms_up_linearly_then_follows_its_shape(name):
    from diffusers.optimization import SchedulerType

    assert name in {s.value for s in SchedulerType}
    warmup, steps = (0, 10) if name == "constant" else (4, 12)
    factors = schedule_factors(name, warmup, steps)
    assert factors[:warmup] == pytest.approx([s / warmup for s in range(warmup)])
    after = [(s - warmup) / (steps - warmup) for s in range(warmup, steps)]  # progress in [0, 1)
    shapes = {
        "constant": [1.0] * steps,
        "constant_with_warmup": [1.0] * len(after),
        "linear": [1.0 - p for p in after],
        "cosine": [0.5 * (1 + math.cos(math.pi * p)) for p in after],
        "cosine_with_restarts": [0.5 * (1 + math.cos(math.pi * p)) for p in after],  # one cycle
        "polynomial": [(1.0 - 1e-7) * (1 - p) + 1e-7 for p in after],  # power 1, down to lr_end 1e-7
    }
    assert factors[warmup:] == pytest.approx(shapes[name], abs=1e-9)


def test_a_bad_schedule_name_or_a_warmup_it_ignores_is_refused(make_config, capsys):
    with pytest.raises(ValueError) as error:
        make_config(lr_scheduler="cosine_annealing").check()
    assert str(error.value) == (
        "--lr-scheduler: expected one of constant, constant_with_warmup, linear, cosine, cosine_with_restarts, "
        "polynomial, got 'cosine_annealing'"
    )
    with pytest.raises(ValueError, match="--lr-warmup-steps: 5 has no effect with --lr-scheduler constant"):
        make_config(lr_scheduler="constant", lr_warmup_steps=5).check()
    with pytest.raises(SystemExit):
        main(["train", "--lr-scheduler", "cosine_annealing"])
    err = capsys.readouterr().err
    assert "argument --lr-scheduler: invalid choice: 'cosine_annealing'" in err and "polynomial" in err


# -- --push-to-hub -----------------------------------------------------------------------------


class LocalHub:
    """A stand-in for huggingface_hub.HfApi: repos are folders under `root`."""

    def __init__(self, root: Path, fail: str | None = None):
        self.root, self.fail, self.calls = root, fail, []

    def create_repo(self, repo_id, exist_ok=False):
        self.calls.append(("create_repo", repo_id, exist_ok))
        if self.fail == "create_repo":
            raise PermissionError("403 Forbidden: token has no write access")
        return SimpleNamespace(repo_id=repo_id if "/" in repo_id else f"someone/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message):
        self.calls.append(("upload_folder", repo_id, Path(folder_path).name))
        if self.fail == "upload_folder":
            raise ConnectionError("connection reset by peer")
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)


def relative_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_push_to_hub_creates_the_repo_at_start_and_uploads_final(make_config, tmp_path):
    hub = LocalHub(tmp_path / "hub")
    token = "hf_test_token_never_written"
    trainer = Trainer(make_config(max_steps=1, push_to_hub=True, hub_token=token), hub=hub)
    assert hub.calls == [("create_repo", "run", True)]  # before the first step; named after --output-dir
    result = trainer.fit()

    assert hub.calls[1:] == [("upload_folder", "someone/run", "final")]
    assert result.hub_repo == "someone/run"
    assert relative_files(hub.root / "someone" / "run") == relative_files(result.final)
    written = [p for p in Path(trainer.output_dir).rglob("*") if p.is_file()]
    assert not [p for p in written if token.encode() in p.read_bytes()], "the token was written"
    assert token not in repr(trainer.config) and "hub_token" not in trainer.config.to_dict()


def test_push_to_hub_failures_are_reported_at_start_or_leave_final_on_disk(make_config, tmp_path):
    with pytest.raises(ValueError, match="--push-to-hub: the Hugging Face Hub is offline here"):  # tests run offline
        Trainer(make_config(push_to_hub=True, teacher=NO_TEACHER))
    with pytest.raises(ValueError, match="--push-to-hub: cannot create or reach the Hub repo 'me/x' "
                                         r"\(PermissionError: 403 Forbidden"):
        Trainer(make_config(push_to_hub=True, hub_model_id="me/x", teacher=NO_TEACHER),
                hub=LocalHub(tmp_path, fail="create_repo"))
    with pytest.raises(ValueError, match="--hub-model-id: expected NAME or OWNER/NAME .*, got 'me/x/y'"):
        make_config(push_to_hub=True, hub_model_id="me/x/y").check()

    trainer = Trainer(make_config(max_steps=1, push_to_hub=True, hub_model_id="me/x"),
                      hub=LocalHub(tmp_path, fail="upload_folder"))
    with pytest.raises(OSError, match="--push-to-hub: uploading .*final to me/x failed .*hf upload me/x"):
        trainer.fit()
    assert (Path(trainer.output_dir) / "final" / "model_index.json").is_file()


# -- --revision / --variant --------------------------------------------------------------------


@pytest.fixture(scope="module")
def variant_teacher_dir(tiny_pipeline_dir, tmp_path_factory):
    """The tiny teacher with fp16 variant files next to its default ones, holding other weights
    (each default weight + 0.01, stored in fp16), so a test can tell which files were loaded."""
    from diffusers import StableDiffusionPipeline

    folder = tmp_path_factory.mktemp("variant") / "tiny-sd"
    shutil.copytree(tiny_pipeline_dir, folder)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
    with torch.no_grad():
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            for param in module.parameters():
                param.add_(0.01)
    pipe.to(torch.float16).save_pretrained(folder, variant="fp16", safe_serialization=True)
    return folder


def test_variant_loads_the_variant_files_of_every_component(make_config, variant_teacher_dir):
    files = {
        name: load_file(next((variant_teacher_dir / name).glob("*.fp16.safetensors")))
        for name in ("unet", "vae", "text_encoder")
    }
    default = load_file(variant_teacher_dir / "unet" / "diffusion_pytorch_model.safetensors")
    trainer = Trainer(make_config(teacher=str(variant_teacher_dir), variant="fp16", max_steps=1))

    def same(module, weights, rename=lambda n: n):
        state = {rename(n): p for n, p in module.state_dict().items()}
        return all(torch.equal(state[k].float(), weights[k].float()) for k in weights)

    def base(name):  # the LoRA-wrapped teacher's parameter names
        return name.replace(".base_layer", "")

    assert same(trainer.fake_score_unet, files["unet"], base)
    assert not same(trainer.fake_score_unet, default, base)
    assert same(trainer.student_unet, files["unet"])  # the student starts from the teacher's variant
    assert same(trainer.vae, files["vae"])
    assert same(trainer.text_encoder, files["text_encoder"])
    final = trainer.fit().final  # the export re-reads the teacher's VAE: the variant too
    assert same(trainer.vae, load_file(final / "vae" / "diffusion_pytorch_model.safetensors"))


def test_revision_of_a_local_teacher_and_a_bad_variant_are_refused(make_config):
    with pytest.raises(ValueError, match="--revision: 'v1.0' picks a version of a Hub repo, but --teacher .* is a "
                                         "local folder"):
        Trainer(make_config(revision="v1.0"))
    with pytest.raises(ValueError, match="--variant: expected a weight-file variant such as fp16, .* got 'fp16.bin'"):
        make_config(variant="fp16.bin").check()


# -- --allow-tf32 ------------------------------------------------------------------------------


@pytest.mark.parametrize("allow", [True, False])
def test_allow_tf32_sets_both_flags_for_the_run_and_restores_them(make_config, recorder, tf32_flags, allow):
    trainer = Trainer(make_config(max_steps=1, allow_tf32=allow))
    trainer.fit()
    assert {flags for _, _, flags in recorder.steps} == {(allow, allow)}  # while the optimizers stepped
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, True)
    assert trainer.config.to_dict()["allow_tf32"] is allow  # recorded in checkpoints and final/


# -- --use-8bit-adam ---------------------------------------------------------------------------


@pytest.mark.skipif(HAS_BITSANDBYTES, reason="bitsandbytes is installed")
def test_8bit_adam_without_bitsandbytes_is_refused_before_any_model_loads(make_config):
    with pytest.raises(ValueError) as error:
        Trainer(make_config(use_8bit_adam=True, teacher=NO_TEACHER))
    assert str(error.value) == "--use-8bit-adam needs the bitsandbytes package: pip install bitsandbytes"


def test_8bit_adam_builds_bitsandbytes_adamw_without_weight_decay():
    bnb = pytest.importorskip("bitsandbytes")
    from tiue.train.setup import build_optimizers

    models = SimpleNamespace(student=torch.nn.Linear(4, 4), lora_params=[torch.nn.Parameter(torch.zeros(4))])
    student, lora, _, _ = build_optimizers(TrainConfig(use_8bit_adam=True), models, max_steps=10)
    for optimizer in (student, lora):
        assert isinstance(optimizer, bnb.optim.AdamW8bit)
        assert optimizer.param_groups[0]["weight_decay"] == 0.0
        assert optimizer.param_groups[0]["betas"] == (0.9, 0.999)


# -- the examples' YAML names ------------------------------------------------------------------

EXAMPLE_YAML = """\
pretrained_model_name_or_path: {teacher}
output_dir: {output}
train_batch_size: 2
max_train_steps: 1
num_train_epochs: 3
learning_rate: 1.0e-4
lr_scheduler: cosine
lr_warmup_steps: 0
gradient_accumulation_steps: 1
mixed_precision: "no"
seed: 7
report_to: none
max_grad_norm: 0.5
checkpointing_steps: 1
checkpoints_total_limit: 2
validation_steps: 0
validation_prompt: a red cube
allow_tf32: false
"""


def test_yaml_from_a_diffusers_example_trains(tiny_pipeline_dir, captions_file, tmp_path, capsys):
    settings = tmp_path / "example.yaml"
    settings.write_text(EXAMPLE_YAML.format(teacher=tiny_pipeline_dir, output=tmp_path / "run"))
    config = TrainConfig.from_sources(settings, {"captions": str(captions_file)})
    assert (config.teacher, config.batch_size, config.max_steps, config.epochs) == (str(tiny_pipeline_dir), 2, 1, 3)
    assert (config.checkpoint_every, config.keep_checkpoints, config.validate_every) == (1, 2, 0)
    assert (config.seed, config.max_grad_norm, config.lr_scheduler, config.allow_tf32) == (7, 0.5, "cosine", False)
    assert config.validation_prompts == ("a red cube",)

    code = main(["train", "--config", str(settings), "--captions", str(captions_file), "--device", "cpu",
                 "--num-steps", "2", "--resolution", "32", "--batch-size", "1"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-00000001").is_dir()
    assert (tmp_path / "run" / "final" / "model_index.json").is_file()


def test_every_alias_names_a_setting_and_flags_win_over_aliased_yaml_keys(tmp_path):
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(EXAMPLE_ALIASES.values()) <= fields and not set(EXAMPLE_ALIASES) & fields
    settings = tmp_path / "s.yaml"
    settings.write_text("pretrained_teacher_model: some/teacher\ntrain_batch_size: 4\nresume_from_checkpoint: latest\n")
    config = TrainConfig.from_sources(settings, {"batch_size": 2})  # a flag overrides the aliased key
    assert (config.teacher, config.batch_size, config.resume) == ("some/teacher", 2, "latest")


def test_an_alias_and_its_name_together_or_an_image_dataset_key_is_refused(tmp_path):
    settings = tmp_path / "s.yaml"
    settings.write_text("batch_size: 2\ntrain_batch_size: 4\n")
    with pytest.raises(ValueError) as error:
        TrainConfig.from_sources(settings)
    assert str(error.value) == (
        f"--batch-size: given twice in --config {settings}, as 'batch_size' and 'train_batch_size'; keep one"
    )
    settings.write_text("pretrained_model_name_or_path: a\npretrained_teacher_model: b\n")
    with pytest.raises(ValueError, match="--teacher: .* 'pretrained_model_name_or_path' and 'pretrained_teacher_model'"):
        TrainConfig.from_sources(settings)
    with pytest.raises(ValueError, match="--teacher: given twice in the settings, as 'teacher' and 'pretrained_model"):
        TrainConfig.from_dict({"teacher": "a", "pretrained_model_name_or_path": "b"})
    settings.write_text("train_data_dir: images/\n")
    with pytest.raises(ValueError, match="'train_data_dir' \\(a setting of diffusers' training examples\\) has no "
                                         "counterpart here: tiue distils from captions only"):
        TrainConfig.from_sources(settings)
    settings.write_text("train_batch_sise: 2\n")
    with pytest.raises(ValueError, match="--train-batch-sise: unknown setting 'train_batch_sise'; accepted: .*"
                                         "as in diffusers' training examples: .*train_batch_size"):
        TrainConfig.from_sources(settings)
