"""Where a run happened: device name and git revision (from benchmarks/_report.py, shared with
the kernels suite), library versions, threads."""

from __future__ import annotations

import datetime
import os
import re

import torch

from _report import device_name, git_revision

__all__ = ["device_slug", "run_metadata"]


def device_slug(device: torch.device) -> str:
    """The device's name as a file-name part, as the kernels suite names its reports:
    "nvidia-h100-80gb-hbm3", "amd-epyc-2-threads"."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", device_name(device)).strip("-").lower()


def run_metadata(device: torch.device) -> dict:
    import diffusers

    return dict(
        device_name=device_name(device),
        device_slug=device_slug(device),
        device_type=device.type,
        git_revision=git_revision(),
        torch=torch.__version__,
        diffusers=diffusers.__version__,
        cuda=torch.version.cuda,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        timestamp=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )
