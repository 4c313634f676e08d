"""One rank of the two-process test: `torchrun --nproc_per_node 2 distributed_worker.py CONFIG_JSON OUT`.

Trains with the config given, then each rank writes the weights it ends with, so the test can
check that every rank holds the same student and compare it with a one-process run.
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from tiue.train import TrainConfig, Trainer
from tiue.train.models import lora_state_dict

torch.set_num_threads(1)
config = TrainConfig.from_dict(json.loads(sys.argv[1]))
out = Path(sys.argv[2])
trainer = Trainer(config)
trainer.fit()
rank = trainer.accelerator.process_index
weights = {f"student.{k}": v.contiguous() for k, v in trainer.student_unet.state_dict().items()}
weights.update({f"lora.{k}": v.contiguous() for k, v in lora_state_dict(trainer.fake_score_unet).items()})
for name, optimizer in (("student", trainer.student_optimizer), ("lora", trainer.lora_optimizer)):
    for index, state in optimizer.state_dict()["state"].items():
        weights[f"adam.{name}.{index}.exp_avg"] = state["exp_avg"].contiguous()
save_file(weights, out / f"rank{rank}.safetensors")
print(f"rank {rank} of {trainer.accelerator.num_processes}: {trainer.accelerator.distributed_type}, done")
