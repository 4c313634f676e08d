"""configs/sd21-base.yaml is the paper's run, and its one-GPU command lines train the same method."""

import re
import shlex
from pathlib import Path

from tiue.cli import build_parser
from tiue.cli.train import config_from_args

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "sd21-base.yaml"
OFFICIAL_GLOBAL_BATCH, OFFICIAL_PROCESSES = 64, 8


def config_of(command_line: str):
    args = build_parser("train").parse_args(shlex.split(command_line)[1:])
    return config_from_args(args)


def test_the_paper_config_has_the_official_machinery():
    config = config_of(f"tiue train --config {CONFIG}")
    assert config.gradient_checkpointing  # on in the official run
    assert config.mixed_precision == "fp16" and not config.half_precision_teacher
    assert config.batch_size * OFFICIAL_PROCESSES * config.gradient_accumulation_steps == OFFICIAL_GLOBAL_BATCH
    assert config.kl_sum_weight(config.batch_size) == 0.1  # the official weight on the sum over 8 prompts


def test_its_one_gpu_command_lines_keep_the_global_batch_and_the_kl_to_vsd_ratio():
    official = config_of(f"tiue train --config {CONFIG}")
    lines = re.findall(r"^#\s+(tiue train --config configs/sd21-base\.yaml[^#\n]*)#\s*one", CONFIG.read_text(), re.M)
    assert len(lines) >= 1
    for line in lines:
        config = config_of(line.replace("configs/sd21-base.yaml", str(CONFIG)))
        assert config.batch_size * config.gradient_accumulation_steps == OFFICIAL_GLOBAL_BATCH, line
        # The KL sum's weight per prompt, against the VSD mean's 1 / B: the official ratio.
        ratio = config.kl_sum_weight(config.batch_size) * config.batch_size
        assert ratio == official.kl_sum_weight(official.batch_size) * official.batch_size, line
