"""This process's place in the default torch.distributed group, for code that runs with or without one."""

from __future__ import annotations

import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group (e.g. under DDP), False in a plain process."""
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the default group; (0, 1) outside one."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


__all__ = ["is_distributed", "rank_world"]
