"""Data-parallel training with torch.distributed when the train step is launched by `torchrun`.

torchrun sets RANK and WORLD_SIZE (and the rendezvous address) in every process it starts; without
them the train step runs as one process and nothing here does anything. Gloo serves CPU processes,
NCCL GPU ones.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def world() -> tuple[int, int]:
    """(rank, world size) of this process: (0, 1) unless launched by torchrun."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def join(device: torch.device) -> tuple[int, int]:
    """Join the process group torchrun set up (once per process); returns (rank, world size)."""
    rank, size = world()
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return rank, size


def announce(flag: bool, device: torch.device) -> bool:
    """Rank 0's flag, on every rank (a broadcast; the flag itself where there is one process)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
