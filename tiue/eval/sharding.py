"""Work split across processes started by `torchrun` or `accelerate launch`.

Both launchers set RANK and WORLD_SIZE (and MASTER_ADDR / MASTER_PORT); a plain run has
neither and is rank 0 of 1. Items are split into contiguous blocks by global index, so a
result never depends on how many processes made it (each image is seeded by its global
index). Results travel as Python objects through the gloo backend, which works on CPU and
next to NCCL on GPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch.distributed as dist

__all__ = ["ProcessGroup", "shard_range"]


def shard_range(num_items: int, rank: int, world_size: int) -> range:
    """Rank `rank`'s contiguous block of range(num_items); blocks differ in size by at most 1."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank, world_size: expected 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


@dataclass
class ProcessGroup:
    rank: int = 0
    world_size: int = 1
    owns_group: bool = False

    @classmethod
    def from_environment(cls) -> "ProcessGroup":
        """Join the launcher's process group (gloo) when WORLD_SIZE > 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        owns = False
        if not dist.is_initialized():
            dist.init_process_group(backend="gloo")
            owns = True
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), owns_group=owns)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, num_items: int) -> range:
        return shard_range(num_items, self.rank, self.world_size)

    def gather(self, value) -> list:
        """Every rank's `value`, in rank order, on every rank."""
        if self.world_size == 1:
            return [value]
        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
