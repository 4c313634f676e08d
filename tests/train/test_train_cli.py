"""`tiue train` end to end in a real subprocess, its final pipeline sampled, and its errors."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tiue.cli import main
from tiue.train.checkpoint import list_checkpoints, read_checkpoint

REPO = Path(__file__).resolve().parents[2]


def tiue_env():
    return dict(os.environ, OMP_NUM_THREADS="2", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def test_cli_trains_and_final_is_a_pipeline_tiue_samples(tiny_pipeline_dir, captions_file, tmp_path):
    from tiue.pipeline import TiUEPipeline

    settings = tmp_path / "run.yaml"
    settings.write_text("num-steps: 2\nresolution: 32\nbatch_size: 3\nlambda_kl: 0.1\nmax-steps: 50\n")
    out = tmp_path / "run"
    command = [
        sys.executable, "-m", "tiue", "train", "--config", str(settings),
        "--teacher", str(tiny_pipeline_dir), "--captions", str(captions_file), "--output-dir", str(out),
        "--max-steps", "2", "--batch-size", "2", "--device", "cpu", "--report-to", "tensorboard",
        "--checkpoint-every", "1", "--keep-checkpoints", "1", "--validate-every", "1",
        "--validation-prompts", "a red cube", "--validation-prompts", "a blue ball", "--learning-rate", "1e-4",
    ]
    proc = subprocess.run(command, env=tiue_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"trained 2 steps; pipeline written to {out / 'final'}" in proc.stdout
    assert "step/s" in proc.stderr  # the progress bar's rate

    assert [step for step, _ in list_checkpoints(out / "checkpoints")] == [2]  # kept the last 1
    saved = read_checkpoint(out / "checkpoints" / "checkpoint-00000002")
    assert saved.state["config"]["batch_size"] == 2 and saved.state["config"]["num_steps"] == 2  # flags won
    final = out / "final"
    ema_weights = load_file(final / "unet" / "diffusion_pytorch_model.safetensors")
    raw_weights = load_file(final / "unet_raw" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ema_weights[k], saved.ema[k]) for k in saved.ema)
    assert all(torch.equal(raw_weights[k], saved.student[k]) for k in saved.student)
    assert (final / "lora" / "pytorch_lora_weights.safetensors").is_file()
    assert json.loads((final / "model_index.json").read_text())["_class_name"] == "TiUEPipeline"
    card = (final / "README.md").read_text()  # the model card names the teacher and the run's settings
    assert "base_model:" in card and "| steps trained | 2 |" in card and "| num_steps | 2 |" in card
    assert (out / "loss_curve.png").stat().st_size > 0
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-00000001.png", "step-00000002.png"]
    assert list((out / "tiue-train").rglob("events.out.tfevents.*")), "no TensorBoard log"

    # A run can start from it: --student takes a UNet folder (or a pipeline folder).
    from tiue.train.models import load_student

    student = load_student(str(final / "unet_raw"), pipe_unet := TiUEPipeline.from_pretrained(final).unet, str(final))
    assert all(torch.equal(student.unet.state_dict()[k], raw_weights[k]) for k in raw_weights)
    assert load_student(str(final), pipe_unet, str(final)).unet.conv_in.weight.equal(ema_weights["conv_in.weight"])

    pipe = TiUEPipeline.from_pretrained(final)
    images = pipe(["a red cube"], num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                  output_type="np", height=32, width=32).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()


def run_cli(argv, capsys):
    code = main(["train", *argv])
    return code, capsys.readouterr().err


def test_cli_errors_name_the_flag_before_any_compute(tiny_pipeline_dir, captions_file, tmp_path, capsys):
    base = ["--teacher", str(tiny_pipeline_dir), "--captions", str(captions_file),
            "--output-dir", str(tmp_path / "run"), "--device", "cpu", "--report-to", "none"]

    code, err = run_cli([*base, "--captions", str(tmp_path / "missing.txt")], capsys)
    assert code == 1 and "error: --captions: no such file or folder" in err
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n")
    code, err = run_cli([*base, "--captions", str(empty)], capsys)
    assert code == 1 and "error: --captions: no captions" in err
    code, err = run_cli([*base, "--num-steps", "0"], capsys)
    assert code == 1 and "error: --num-steps: expected an integer from 1 to 1000, got 0" in err
    code, err = run_cli([*base, "--lambda-clip", "0.1"], capsys)
    assert code == 1 and "error: --lambda-clip: 0.1 needs --clip-model" in err
    code, err = run_cli([*base, "--clip-model", str(tmp_path / "no-clip"), "--lambda-clip", "0.1"], capsys)
    assert code == 1 and "error: --clip-model: cannot load a CLIP model from" in err

    not_sd = tmp_path / "not-sd"
    shutil.copytree(tiny_pipeline_dir, not_sd)
    index = json.loads((not_sd / "model_index.json").read_text())
    index["unet"] = ["diffusers", "UNet2DModel"]
    (not_sd / "model_index.json").write_text(json.dumps(index))
    code, err = run_cli([*base, "--teacher", str(not_sd)], capsys)
    assert code == 1 and "error: --teacher:" in err and "not a Stable Diffusion UNet2DConditionModel" in err
    assert not (tmp_path / "run").exists()  # nothing was trained or written


def test_unsplittable_unet_is_rejected(tmp_path):
    from diffusers import UNet2DConditionModel

    from tiue.train.models import load_student

    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1, attention_head_dim=8,
        norm_num_groups=8, cross_attention_dim=32, class_embed_type="timestep",
    )
    unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(NotImplementedError, match="--student: .* is not a UNet tiue can split"):
        load_student(str(tmp_path / "unet"), unet, "unused-teacher")
