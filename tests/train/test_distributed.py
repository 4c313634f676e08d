"""Two real processes (torchrun, gloo on CPU) against one process with the doubled batch."""

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from tiue.train import Trainer
from tiue.train.models import lora_state_dict

WORKER = Path(__file__).with_name("distributed_worker.py")
REPO = Path(__file__).resolve().parents[2]


def test_two_processes_agree_and_match_one_process_with_the_doubled_batch(make_config, tmp_path):
    two = make_config(max_steps=2, batch_size=2, output_dir=str(tmp_path / "two"))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.run(
        # torchrun's module, from this interpreter: no console script on PATH needed.
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
         json.dumps(two.to_dict()), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=420,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "MULTI_CPU" in proc.stdout
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in range(2)]
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0]), "ranks diverged"

    # One process, batch 4: the same global batch, the same per-sample draws, the same
    # --lambda-kl. L_kl sums each process's own K*B outputs (as in the paper's multi-GPU code) and
    # DDP averages gradients over processes; the KL sum's weight follows the per-process batch
    # (TrainConfig.kl_sum_weight), so the split does not change the method.
    one = Trainer(dataclasses.replace(two, batch_size=4, output_dir=str(tmp_path / "one")))
    one.fit()
    single = {f"student.{k}": v for k, v in one.student_unet.state_dict().items()}
    single.update({f"lora.{k}": v for k, v in lora_state_dict(one.fake_score_unet).items()})
    for name, optimizer in (("student", one.student_optimizer), ("lora", one.lora_optimizer)):
        for index, state in optimizer.state_dict()["state"].items():
            single[f"adam.{name}.{index}.exp_avg"] = state["exp_avg"]
    assert single.keys() == ranks[0].keys()

    # Gradients (Adam's first moments) agree to float round-off, relative to their scale.
    for name in ("student", "lora"):
        keys = [k for k in single if k.startswith(f"adam.{name}.")]
        scale = max(single[k].abs().max().item() for k in keys)
        worst = max((single[k] - ranks[0][k]).abs().max().item() for k in keys)
        assert worst <= 1e-5 * scale, f"{name} gradients: one process vs two differ by {worst} (scale {scale})"
    # Weights: Adam divides by sqrt(v) + 1e-8, so components whose gradient is ~1e-8 turn
    # round-off into visible update differences; bound them well under one step's movement.
    teacher = load_file(Path(two.teacher) / "unet" / "diffusion_pytorch_model.safetensors")
    moved = max((one.student_unet.state_dict()[k] - v).abs().max().item() for k, v in teacher.items())
    assert moved > 1e-4  # the runs did train (2 steps at lr 1e-4)
    for name, step_size in (("student", two.learning_rate), ("lora", two.learning_rate_lora)):
        keys = [k for k in single if k.startswith(f"{name}.")]
        worst = max((single[k] - ranks[0][k]).abs().max().item() for k in keys)
        assert worst <= 0.1 * step_size, f"{name} weights: one process vs two differ by {worst}"
